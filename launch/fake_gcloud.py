#!/usr/bin/env python3
"""A stand-in for `gcloud compute tpus` on one machine, to rehearse the pod launcher (rlvr-pod) without a
cloud: `GCLOUD="python3 launch/fake_gcloud.py" FAKE_GCLOUD_STATE=/tmp/pod TPU_NAME=t rlvr-pod create ...`.

Each worker of a slice is a directory of its own (its "disk"; HOME points there, so ~/rlvr_jax is per
worker) and `tpu-vm ssh` runs the command there in the foreground, as one process of a jax.distributed job
on this CPU: JAX_COORDINATOR_ADDRESS=127.0.0.1:<port picked at create>, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=M. Workers and devices per worker come
from the accelerator type, or FAKE_GCLOUD_WORKERS / FAKE_GCLOUD_DEVICES. FAKE_GCLOUD_CREATE_DELAY (seconds)
keeps a new slice CREATING that long. `preempt NAME` (ours, not gcloud's) marks the slice PREEMPTED and
SIGKILLs everything its workers run. Every call is appended to $FAKE_GCLOUD_STATE/calls.log.

Subset: queued-resources create/describe/delete/list; tpu-vm create/describe/delete/ssh/scp; preempt."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

STATE = os.environ.get("FAKE_GCLOUD_STATE", "")
BOOLEAN_FLAGS = {"--spot", "--quiet", "--force", "--recurse", "--async", "--internal-ip", "--reserved", "--best-effort"}


class Fail(Exception):
    """An error gcloud would print, with its exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def parse(words: list[str]) -> tuple[list[str], dict]:
    """gcloud-style words: positionals, and flags as --x=v, --x v or a bare boolean flag."""
    positional, flags, i = [], {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" in w:
            key, value = w.split("=", 1)
            flags[key] = value
        elif w.startswith("--") and (w in BOOLEAN_FLAGS or i + 1 == len(words)):
            flags[w] = True
        elif w.startswith("--"):
            flags[w] = words[i + 1]
            i += 1
        else:
            positional.append(w)
        i += 1
    return positional, flags


# ---- records
def _path(kind: str, name: str) -> str:
    return os.path.join(STATE, kind, f"{name}.json")


def load(kind: str, name: str) -> dict | None:
    try:
        with open(_path(kind, name)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def save(kind: str, name: str, record: dict) -> None:
    os.makedirs(os.path.join(STATE, kind), exist_ok=True)
    tmp = _path(kind, name) + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, _path(kind, name))


def node_or_fail(name: str, verb: str) -> dict:
    node = load("nodes", name)
    if node is None:
        raise Fail(f"ERROR: (gcloud.compute.tpus.tpu-vm.{verb}) NOT_FOUND: Resource 'nodes/{name}' was not found")
    if node["state"] == "CREATING" and time.time() >= node["readyAt"]:
        node["state"] = "READY"
    return node


def shape(accelerator: str) -> tuple[int, int]:
    """(workers, devices per worker) of an accelerator type: v4/v5p count TensorCores (2 per chip),
    v2/v3 hosts hold 8 cores, v5e/v6e count chips; hosts hold 4 chips; env overrides both."""
    gen, _, size = accelerator.rpartition("-")
    n = int(size) if size.isdigit() else 8
    if gen in ("v2", "v3"):
        workers, devices = max(1, n // 8), min(n, 8)
    else:
        chips = n // 2 if gen in ("v4", "v5p") else n
        workers = 1 if chips <= 8 and gen not in ("v4", "v5p") else max(1, chips // 4)
        devices = max(1, chips // workers)
    workers = int(os.environ.get("FAKE_GCLOUD_WORKERS", workers))
    return workers, int(os.environ.get("FAKE_GCLOUD_DEVICES", devices))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_node(name: str, flags: dict, runtime_flag: str, queued: bool) -> None:
    if load("nodes", name) is not None:
        raise Fail(f"ERROR: (gcloud.compute.tpus) ALREADY_EXISTS: node {name} already exists")
    accelerator = str(flags.get("--accelerator-type", "v5litepod-8"))
    workers, devices = shape(accelerator)
    uid = uuid.uuid4().hex[:8]
    disk = os.path.join(STATE, "disks", f"{name}-{uid}")
    for i in range(workers):
        os.makedirs(os.path.join(disk, f"w{i}"))
    delay = float(os.environ.get("FAKE_GCLOUD_CREATE_DELAY", "0"))
    record = {
        "name": name,
        "state": "CREATING" if delay > 0 else "READY",
        "readyAt": time.time() + delay,
        "acceleratorType": accelerator,
        "runtimeVersion": str(flags.get(runtime_flag, "")),
        "schedulingConfig": {"spot": bool(flags.get("--spot"))},
        "uid": uid,
        "port": free_port(),
        "workers": workers,
        "devices": devices,
        "disk": disk,
    }
    if queued:
        record["queuedResource"] = f"queuedResources/{name}"
    save("nodes", name, record)


def public(node: dict) -> dict:
    """What `tpu-vm describe --format=json` shows (plus fakeWorkerDirs, for rehearsals)."""
    keys = ("name", "state", "acceleratorType", "runtimeVersion", "schedulingConfig", "queuedResource")
    out = {k: node[k] for k in keys if k in node}
    out["networkEndpoints"] = [{"ipAddress": "127.0.0.1", "port": 8470} for _ in range(node["workers"])]
    out["fakeWorkerDirs"] = worker_dirs(node)
    return out


def show(record: dict, flags: dict) -> None:
    fmt = str(flags.get("--format", ""))
    if fmt.startswith("value(") and fmt.endswith(")"):
        value = record
        for key in fmt[6:-1].split("."):
            value = value.get(key, "") if isinstance(value, dict) else ""
        print(value)
    else:
        print(json.dumps(record, indent=1))


def worker_dirs(node: dict) -> list[str]:
    return [os.path.join(node["disk"], f"w{i}") for i in range(node["workers"])]


def kill_node_processes(node: dict) -> int:
    """SIGKILLs every process started on the node's workers (found by the marker in its environment)."""
    marker, killed = f"FAKE_GCLOUD_NODE={node['uid']}".encode() + b"\0", 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read():
                    continue
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def drop_node(name: str) -> None:
    node = load("nodes", name)
    if node is not None:
        kill_node_processes(node)
        os.remove(_path("nodes", name))
        shutil.rmtree(node["disk"], ignore_errors=True)


# ---- queued-resources
def queued(verb: str, pos: list[str], flags: dict) -> int:
    if verb == "list":
        for f in sorted(
            os.listdir(os.path.join(STATE, "queued")) if os.path.isdir(os.path.join(STATE, "queued")) else []
        ):
            record = load("queued", f[:-5])
            print(f"{record['name']}  {record['state']['state']}")
        return 0
    name = pos[0]
    record = load("queued", name)
    if verb == "create":
        if record is not None:
            raise Fail(f"ERROR: (gcloud.compute.tpus.queued-resources.create) ALREADY_EXISTS: {name}")
        node_id = str(flags.get("--node-id", name))
        new_node(node_id, flags, "--runtime-version", queued=True)
        save("queued", name, {"name": name, "nodeId": node_id, "state": {"state": "ACTIVE"}})
        return 0
    if record is None:
        raise Fail(f"ERROR: (gcloud.compute.tpus.queued-resources.{verb}) NOT_FOUND: queuedResources/{name}")
    if verb == "describe":
        show(record, flags)
        return 0
    if verb == "delete":
        if load("nodes", record["nodeId"]) is not None and not flags.get("--force"):
            raise Fail("ERROR: (gcloud.compute.tpus.queued-resources.delete) FAILED_PRECONDITION: node exists; --force")
        drop_node(record["nodeId"])
        os.remove(_path("queued", name))
        return 0
    raise Fail(f"fake_gcloud: queued-resources {verb} is not faked", 2)


# ---- tpu-vm
def tpu_vm(verb: str, pos: list[str], flags: dict) -> int:
    if verb == "create":
        new_node(pos[0], flags, "--version", queued=False)
        return 0
    if verb == "scp":
        return scp(pos, flags)
    node = node_or_fail(pos[0], verb)
    if verb == "describe":
        show(public(node), flags)
        return 0
    if verb == "delete":
        drop_node(pos[0])
        return 0
    if verb == "ssh":
        return ssh(node, str(flags.get("--worker", "0")), str(flags.get("--command", "")))
    raise Fail(f"fake_gcloud: tpu-vm {verb} is not faked", 2)


def _die_with_parent() -> None:
    """The remote command goes when its ssh goes, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes  # only here: the preexec hook of a worker's shell

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def start_worker(node: dict, i: int, command: str) -> subprocess.Popen:
    home = worker_dirs(node)[i]
    env = dict(
        os.environ,
        HOME=home,
        FAKE_GCLOUD_NODE=node["uid"],
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{node['port']}",
        JAX_NUM_PROCESSES=str(node["workers"]),
        JAX_PROCESS_ID=str(i),
        TPU_WORKER_ID=str(i),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={node['devices']}",
    )
    return subprocess.Popen(
        ["bash", "-c", command], cwd=home, env=env, start_new_session=True, preexec_fn=_die_with_parent
    )


def ssh(node: dict, worker: str, command: str) -> int:
    """Runs `command` on one worker or all, in the foreground; the exit status is the command's (the first
    failing worker's for all), 128+N for a signal. A signal to this process stops the commands' groups."""
    if node["state"] != "READY":
        raise Fail(f"ssh: connect to host {node['name']} port 22: Connection refused ({node['state']})", 255)
    workers = range(node["workers"]) if worker == "all" else [int(worker)]
    procs = [start_worker(node, i, command) for i in workers]

    def stop(signum, _frame):
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    codes = [p.wait() for p in procs]
    codes = [c if c >= 0 else 128 - c for c in codes]
    return next((c for c in codes if c != 0), 0)


def copy_tree(src: str, dest: str) -> None:
    """A git work tree's tracked and unignored files, with .venv symlinked (no reinstall); else all of it."""
    if not os.path.isdir(os.path.join(src, ".git")):
        shutil.copytree(src, dest, symlinks=True)
        return
    listed = (
        subprocess.run(
            ["git", "-C", src, "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        source = os.path.join(src, rel)
        if os.path.lexists(source) and not os.path.isdir(source):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, rel), follow_symlinks=False)
    if os.path.isdir(os.path.join(src, ".venv")):
        os.makedirs(dest, exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(src, ".venv")), os.path.join(dest, ".venv"))


def scp(pos: list[str], flags: dict) -> int:
    """`scp [--recurse] SRC NAME:DEST --worker=W`: local to workers only (what the launcher needs)."""
    src, target = pos
    name, dest = target.split(":", 1)
    node = node_or_fail(name, "scp")
    if node["state"] != "READY":
        raise Fail(f"scp: connect to host {name} port 22: Connection refused ({node['state']})", 255)
    if os.path.isdir(src) and not flags.get("--recurse"):
        raise Fail(f"scp: {src}: not a regular file (use --recurse)")
    worker = str(flags.get("--worker", "0"))
    dirs = worker_dirs(node) if worker == "all" else [worker_dirs(node)[int(worker)]]
    for home in dirs:
        path = os.path.join(home, dest[2:]) if dest.startswith("~/") else dest
        if os.path.isdir(path):
            path = os.path.join(path, os.path.basename(os.path.normpath(src)))
        if os.path.isdir(src):
            copy_tree(src, path)
        else:
            shutil.copy2(src, path)
    return 0


def preempt(name: str) -> int:
    node = node_or_fail(name, "preempt")
    node["state"] = "PREEMPTED"
    save("nodes", name, node)
    for qname in (
        [f[:-5] for f in os.listdir(os.path.join(STATE, "queued"))]
        if os.path.isdir(os.path.join(STATE, "queued"))
        else []
    ):
        record = load("queued", qname)
        if record and record["nodeId"] == name:
            record["state"] = {"state": "SUSPENDED"}
            save("queued", qname, record)
    print(f"preempted {name}: {kill_node_processes(node)} processes killed")
    return 0


def main(argv: list[str]) -> int:
    if not STATE:
        raise Fail("fake_gcloud: set FAKE_GCLOUD_STATE to a directory for the fake cloud's state", 2)
    os.makedirs(STATE, exist_ok=True)
    with open(os.path.join(STATE, "calls.log"), "a") as f:
        f.write(shlex.join(argv) + "\n")
    words = argv[2:] if argv[:2] == ["compute", "tpus"] else argv
    if words[:1] == ["preempt"]:
        return preempt(words[1])
    if len(words) < 2:
        raise Fail(f"fake_gcloud: usage: compute tpus queued-resources|tpu-vm VERB NAME ... (got {argv})", 2)
    group, verb = words[0], words[1]
    pos, flags = parse(words[2:])
    if group == "queued-resources":
        return queued(verb, pos, flags)
    if group == "tpu-vm":
        return tpu_vm(verb, pos, flags)
    raise Fail(f"fake_gcloud: {group} is not faked", 2)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Fail as e:
        print(e, file=sys.stderr)
        sys.exit(e.code)

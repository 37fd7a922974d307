"""Every file a run reads or writes, named by a local path or a Cloud Storage URL (`gs://bucket/path`).

One layer over `etils.epath` (what Orbax itself uses; gs:// goes through gcsfs): the rest of the package
calls these functions instead of `open`, `os.makedirs` or `shutil`, so `--workdir=gs://...`, a gs://
dataset or a gs:// Hugging Face directory work wherever a local path does. Libraries that need real files
(safetensors memory-maps, tokenizers) get them through `local_copy` (download once into a cache) and
`staged_dir` (write locally, upload on exit).

Many hosts: each host reads; only process 0 writes shared files (`is_writer`), and `sync` is the barrier
that makes what it wrote visible to the others before they read it.

A local Cloud Storage emulator is used when the environment says so: STORAGE_EMULATOR_HOST for gcsfs and
google-cloud-storage, TENSORSTORE_GCS_HTTP_URL for Orbax's arrays (docs/pod.md)."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterator

import fsspec
import jax
from etils import epath
from jax.experimental import multihost_utils

# gcsfs caches directory listings per process: on a pod, a host would not see the files another host wrote
# after it first listed their folder (stage markers, reports). Every lookup asks the bucket instead.
for _protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(_protocol, {})["use_listings_cache"] = False


def is_remote(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """The absolute form: a URL as given (no trailing '/'), a local path expanded and made absolute."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return os.path.join(str(base), *parts)  # POSIX joining is right for URLs too


def _p(path: str) -> epath.Path:
    return epath.Path(str(path) if is_remote(path) else os.path.expanduser(str(path)))


def exists(path: str) -> bool:
    return _p(path).exists()


def isdir(path: str) -> bool:
    return _p(path).is_dir()


def isfile(path: str) -> bool:
    return _p(path).is_file()


def listdir(path: str) -> list[str]:
    return sorted(p.name for p in _p(path).iterdir())


def makedirs(path: str) -> None:
    """Create a directory and its parents (on Cloud Storage, directories are implied by objects: no-op)."""
    if not is_remote(path):
        os.makedirs(os.path.expanduser(path), exist_ok=True)


def remove(path: str) -> None:
    """Deletes a file (local or Cloud Storage object) if it exists."""
    if exists(path):
        _p(path).unlink()


def rmtree(path: str) -> None:
    if exists(path):
        _p(path).rmtree()


def open(path: str, mode: str = "r", **kwargs):  # noqa: A001 - the same contract as the builtin
    """The file at `path`; Cloud Storage has no append: use `append_text`."""
    if is_remote(path) and "a" in mode:
        raise ValueError(f"{path}: Cloud Storage objects cannot be opened for append; use storage.append_text")
    if not is_remote(path):
        return builtins.open(os.path.expanduser(path), mode, **kwargs)
    return _p(path).open(mode, **{k: v for k, v in kwargs.items() if k != "newline"})


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_text(path))


def write_text(path: str, text: str) -> None:
    """Whole or absent: a local file is written beside and renamed; a Cloud Storage object is replaced in
    one upload."""
    if is_remote(path):
        _p(path).write_text(text)
        return
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with builtins.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
    """Whole or absent, as `write_text`."""
    if is_remote(path):
        _p(path).write_bytes(data)
        return
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with builtins.open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: str, value, **dumps_kwargs) -> None:
    write_text(path, json.dumps(value, **{"indent": 2, **dumps_kwargs}) + "\n")


def append_text(path: str, text: str) -> None:
    """Append to a file. On Cloud Storage the object is read and written again whole (objects are immutable),
    which suits the small logs it is used for (metrics lines, stage attempts)."""
    if not is_remote(path):
        path = os.path.expanduser(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with builtins.open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_text(path, old + text)


def copy_file(src: str, dst: str) -> None:
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(os.path.expanduser(src), os.path.expanduser(dst))
        return
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 24)


def files_under(path: str) -> list[str]:
    """Every file below the directory `path`, as paths relative to it ('/'-separated), sorted."""
    out = []
    for child in _p(path).iterdir():
        if child.is_dir():
            out += [f"{child.name}/{rel}" for rel in files_under(str(child))]
        else:
            out.append(child.name)
    return sorted(out)


def copy_tree(src: str, dst: str) -> None:
    """Copy every file under `src` to the same relative path under `dst` (either may be remote)."""
    for rel in files_under(src):
        target = join(dst, rel)
        makedirs(os.path.dirname(target))
        copy_file(join(src, rel), target)


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("RLVR_CACHE", "~/.cache/rlvr_jax"))


def local_copy(path: str) -> str:
    """A local path holding what `path` names: the path itself when local; for a URL, a copy downloaded once
    into the cache (RLVR_CACHE, default ~/.cache/rlvr_jax) and reused. For libraries that need real files
    (safetensors memory-maps, tokenizers). Every host makes its own; processes of one host that ask at once
    each download, and the first to finish wins (a copy appears whole, by one rename, or not at all)."""
    if not is_remote(path):
        return os.path.expanduser(path)
    url = resolve(path)
    root = os.path.join(cache_root(), "remote", hashlib.sha1(url.encode()).hexdigest()[:16])
    local = os.path.join(root, os.path.basename(url))
    if os.path.exists(os.path.join(root, ".complete")):
        return local
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="download-", dir=os.path.dirname(root))
    try:
        target = os.path.join(tmp, os.path.basename(url))
        if isdir(url):
            copy_tree(url, target)
        else:
            copy_file(url, target)
        with builtins.open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(url)
        os.replace(tmp, root)
    except OSError:
        if not os.path.exists(os.path.join(root, ".complete")):  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return local


@contextlib.contextmanager
def staged_dir(path: str, *, upload: bool = True) -> Iterator[str]:
    """A local directory to write `path`'s files into: `path` itself when local; for a URL, a temporary
    directory whose files are uploaded to it on a clean exit (when `upload`; pass is_writer() on many hosts)."""
    if not is_remote(path):
        makedirs(path)
        yield os.path.expanduser(path)
        return
    tmp = tempfile.mkdtemp(prefix="staged-")
    try:
        yield tmp
        if upload:
            copy_tree(tmp, resolve(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_writer() -> bool:
    """Whether this process writes shared files: process 0 of a multi-host job, or a single process."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across the processes of a multi-host job (a no-op on one): files process 0 wrote before it are
    visible to every host after it."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)

"""`rlvr-generate`: sample completions from a checkpoint (Hugging Face directory or ours) with the
paged rollout engine, printed as text or as JSON with tokens, logprobs, finish reasons, timing and the
engine's use of its KV pool."""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from rlvr_jax import checkpoint, cli, sharding, storage
from rlvr_jax.model import hf, params_io
from rlvr_jax.model.tokenizer import Tokenizer, load_tokenizer
from rlvr_jax.rollout import pages, sampling
from rlvr_jax.rollout.engine import Engine
from rlvr_jax.rollout.settings import EngineConfig, engine_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-generate",
        description="Generate completions with the paged rollout engine. Stops at the tokenizer's EOS "
        "tokens. With --json, prints one JSON object: every sample's tokens, logprobs (of the "
        "distribution sampled from), text and finish reason, a timing object, and an engine object "
        "(KV pool pages and MiB, peak pages used, mean slot occupancy, preemptions).",
        epilog="example: rlvr-generate --checkpoint ~/models/Qwen3-0.6B --chat --prompt 'What is 2+2?' --n 2",
    )
    p.add_argument("--checkpoint", required=True, help="Hugging Face directory or rlvr_jax Orbax checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument(
        "--prompts",
        metavar="FILE.jsonl",
        help="one JSON object a line with a 'prompt' string or a 'messages' list (records work); "
        "'messages' are always rendered with the chat template",
    )
    p.add_argument("--chat", action="store_true", help="render --prompt / 'prompt' as a user turn of the chat template")
    p.add_argument(
        "--thinking",
        action="store_true",
        help="with the chat template, open the assistant turn with '<think>\\n', as the trainer does "
        "with data.thinking (the built-in default's models expect it)",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", action="store_true", help="print JSON (samples, timing, the engine's KV pool use) instead of text"
    )
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes of the local mesh (-1 = the rest)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar of generated tokens on stderr (default: when stderr is a terminal)",
    )
    add_engine_args(p)
    return p


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The rollout engine's flags (rlvr-generate, rlvr-eval); the trainer reads them from `rollout.*`."""
    g = p.add_argument_group("rollout engine", "a paged KV pool; decode slots refilled as rows finish")
    d = EngineConfig()  # the flags' defaults are the engine's
    g.add_argument("--num-slots", type=int, default=d.num_slots, help="rows decoded side by side (per batch shard)")
    g.add_argument("--page-size", type=int, default=d.page_size, help="tokens per KV page")
    g.add_argument(
        "--num-pages",
        type=int,
        default=d.num_pages,
        help="pages of the KV pool (per batch shard); 0 = as many as the request could use at once, "
        "at most --memory-fraction of the memory a device has left (a smaller pool preempts and recomputes rows)",
    )
    g.add_argument(
        "--memory-fraction",
        type=float,
        default=d.memory_fraction,
        help="of the memory a device has left, for --num-pages 0",
    )
    g.add_argument("--prefill-chunk", type=int, default=d.prefill_chunk, help="prompt tokens per prefill program call")
    g.add_argument(
        "--prefill-seqs", type=int, default=d.prefill_seqs, help="sequences one prefill call packs into its chunk"
    )
    g.add_argument("--decode-burst", type=int, default=d.decode_burst, help="decode steps per program call")
    g.add_argument("--cache-dtype", choices=["float32", "bfloat16"], default="float32", help="KV pool dtype")
    g.add_argument(
        "--weights-dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="weights while sampling (default: as stored)",
    )


def request_pages(prompt_lens, n: int, max_new_tokens: int, page_size: int) -> int:
    """Pages that hold every row of a request at once, none sharing its prompt's pages, and the scratch page."""
    return 1 + n * sum(pages.cdiv(L + max_new_tokens, page_size) for L in prompt_lens)


def engine_from_args(args, graphdef, cfg, mesh, pad_id: int, need_pages: int) -> Engine:
    """The engine the flags of `add_engine_args` describe. With --num-pages 0 the pool is the smaller of
    `need_pages` (see request_pages) and --memory-fraction of the memory a device has left."""
    config = engine_config(args)  # the flags carry the `rollout` section's field names
    engine = Engine(graphdef, cfg, mesh, config, pad_id=pad_id)  # the pool is allocated by the first generate
    if not config.num_pages and need_pages < engine.num_pages:
        return Engine(graphdef, cfg, mesh, config, pad_id=pad_id, num_pages=need_pages)
    return engine


def read_prompts(args, tokenizer: Tokenizer) -> list[str]:
    """Prompt texts, chat template applied where asked for (and always to 'messages')."""

    def render(text=None, messages=None, where=""):
        if messages is None and not args.chat:
            return text
        messages = messages if messages is not None else [{"role": "user", "content": text}]
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, thinking=args.thinking)
        except ValueError as e:
            raise cli.UsageError(f"{where}chat template: {e}") from None

    if args.prompt:
        return [render(text=t) for t in args.prompt]
    if not storage.isfile(args.prompts):
        raise cli.UsageError(f"{args.prompts}: no such prompts file")
    prompts = []
    with storage.open(args.prompts, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{args.prompts}:{n}: "
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise cli.UsageError(f"{where}invalid JSON: {e}") from None
            if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                prompts.append(render(text=obj["prompt"], where=where))
            elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                prompts.append(render(messages=obj["messages"], where=where))
            else:
                raise cli.UsageError(f"{where}expected an object with a 'prompt' string or a 'messages' list")
    if not prompts:
        raise cli.UsageError(f"{args.prompts}: no prompts")
    return prompts


def load(args):
    """(tokenizer, cfg, graphdef, params, mesh), or cli.UsageError for a missing checkpoint or tokenizer."""
    if not storage.isdir(args.checkpoint):
        raise cli.UsageError(f"{args.checkpoint}: no such checkpoint directory")
    tok_dir = checkpoint.tokenizer_dir_of(args.checkpoint)
    if tok_dir is None:
        raise cli.UsageError(
            f"{args.checkpoint}: no tokenizer (tokenizer.json or tokenizer.model) in the checkpoint "
            f"directory or its tokenizer/ subdirectory"
        )
    try:
        tokenizer = load_tokenizer(tok_dir)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"{tok_dir}: cannot load the tokenizer: {e}") from None
    try:
        mesh = sharding.make_mesh(sharding.MeshShape.parse(args.mesh))
    except (TypeError, ValueError) as e:
        raise cli.UsageError(f"--mesh {args.mesh}: {e}") from None
    try:
        cfg, graphdef, params = params_io.load_params_any(args.checkpoint, mesh)
    except (hf.HFFormatError, FileNotFoundError, RuntimeError) as e:
        raise cli.UsageError(str(e)) from None
    return tokenizer, cfg, graphdef, params, mesh


def run(args, timed: bool = True) -> dict:
    """Generate. With `timed`, a second run of the compiled program gives the generation time; without,
    it is the first run's wall time less compilation (one run instead of two)."""
    tokenizer, cfg, graphdef, params, mesh = load(args)
    texts = read_prompts(args, tokenizer)
    prompt_ids = encode_prompts(texts, tokenizer, cfg.vocab_size)
    sp = sampling_params(args, tokenizer)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        need = request_pages([len(ids) for ids in prompt_ids], args.n, args.max_new_tokens, args.page_size)
        engine = engine_from_args(args, graphdef, cfg, mesh, tokenizer.pad_id, need)
        t0 = time.perf_counter()
        rollout = jax.block_until_ready(engine.generate(params, prompt_ids, sp, progress=progress))
    except (ValueError, MemoryError) as e:  # engine sizes, or a pool too small for a row
        raise cli.UsageError(str(e)) from None
    compile_s = engine.last_compile_seconds
    generation_s = time.perf_counter() - t0 - compile_s
    if timed:  # same seed, same samples: only the clock differs
        t0 = time.perf_counter()
        rollout = jax.block_until_ready(engine.generate(params, prompt_ids, sp, progress=progress))
        generation_s = time.perf_counter() - t0
    generated = int(np.asarray(rollout.lengths).sum())
    return {
        "checkpoint": args.checkpoint,
        "devices": int(mesh.devices.size),
        "sampling": {
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "top_k": sp.top_k,
            "max_new_tokens": sp.max_new_tokens,
            "n": sp.n,
            "seed": sp.seed,
            "stop_token_ids": list(sp.stop_token_ids),
        },
        "samples": samples_of(rollout, texts, tokenizer, args.n),
        "timing": {
            "compile_s": compile_s,
            "generation_s": generation_s,
            "generated_tokens": generated,
            "tokens_per_s": generated / generation_s if generation_s > 0 else float("nan"),
            "timed_run": timed,
        },
        "engine": engine_report(engine, args),
    }


def encode_prompts(texts: list[str], tokenizer: Tokenizer, vocab_size: int) -> list[list[int]]:
    """Token ids of each prompt; a prompt of no tokens, or ids the model has no embedding for, is a cli.UsageError."""
    prompt_ids = [tokenizer.encode(t) for t in texts]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise cli.UsageError(f"prompt {i} encodes to no tokens")
        if max(ids) >= vocab_size:
            raise cli.UsageError(
                f"prompt {i} has token id {max(ids)} but the model's vocabulary has {vocab_size}: "
                f"tokenizer and checkpoint do not match"
            )
    return prompt_ids


def sampling_params(args, tokenizer: Tokenizer) -> sampling.SamplingParams:
    """The flags' sampling parameters, stopping at the tokenizer's EOS tokens."""
    try:
        return sampling.SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            n=args.n,
            stop_token_ids=tuple(tokenizer.eos_ids),
            seed=args.seed,
        )
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def samples_of(rollout, texts: list[str], tokenizer: Tokenizer, n: int) -> list[dict]:
    """One object per row: its prompt, tokens, logprobs, text (without the stop token) and finish reason."""
    tokens, lengths = np.asarray(rollout.completion_tokens), np.asarray(rollout.lengths)
    logprobs, stopped = np.asarray(rollout.logprobs), np.asarray(rollout.stopped)
    index = np.asarray(rollout.prompt_index)
    samples = []
    for r in range(tokens.shape[0]):
        ids = tokens[r, : lengths[r]].tolist()
        text_ids = ids[:-1] if stopped[r] else ids  # the stop token ends the text; it stays in `tokens`
        samples.append(
            {
                "prompt_index": int(index[r]),
                "sample_index": r % n,
                "prompt": texts[index[r]],
                "tokens": ids,
                "logprobs": [float(x) for x in logprobs[r, : lengths[r]]],
                "text": tokenizer.decode(text_ids),
                "finish_reason": "stop" if stopped[r] else "length",
            }
        )
    return samples


def engine_report(engine: Engine, args) -> dict:
    """The engine's use of its KV pool in the last call (the --json output's `engine` object)."""
    st = engine.stats
    return {
        "pages": st["pool_pages"],
        "page_size": args.page_size,
        "mib_per_device": engine.num_pages * engine.page_bytes / 2**20,  # the scratch page included
        "peak_pages": st["peak_pages"],
        "slot_occupancy": st["slot_occupancy"],
        "num_slots": args.num_slots,
        "preemptions": st["preemptions"],
        "compilations": engine.num_compilations,
    }


def print_text(result: dict) -> None:
    for s in result["samples"]:
        print(
            f"=== prompt {s['prompt_index']} sample {s['sample_index']} ({s['finish_reason']}, "
            f"{len(s['tokens'])} tokens)"
        )
        print(s["text"])
    t, e = result["timing"], result["engine"]
    print(
        f"compile {t['compile_s']:.2f} s, generation {t['generation_s']:.2f} s, "
        f"{t['tokens_per_s']:.1f} generated tokens/s; KV pool: peak {e['peak_pages']} of {e['pages']} pages, "
        f"slots {e['slot_occupancy']:.0%} busy, {e['preemptions']} preemptions",
        file=sys.stderr,
    )


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, _run_and_print)


def _run_and_print(args) -> None:
    result = run(args, timed=args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print_text(result)


if __name__ == "__main__":
    sys.exit(main())

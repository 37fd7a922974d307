"""`rlvr-convert`: Hugging Face directory <-> our Orbax checkpoint, placed sharded on the local devices."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from rlvr_jax import checkpoint, cli, sharding
from rlvr_jax.model import hf, params_io


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlvr-convert",
        description="Convert a Hugging Face checkpoint (config.json + safetensors) to an rlvr_jax Orbax "
        "checkpoint, or back. Tensors are read straight into their shardings on the local "
        "devices and written one at a time.",
        epilog="example: rlvr-convert --from ~/models/Qwen3-0.6B --to ckpt/qwen3 --format orbax",
    )
    p.add_argument("--from", dest="src", required=True, help="source directory (HF or Orbax; detected)")
    p.add_argument("--to", dest="dst", required=True, help="output directory")
    p.add_argument("--format", required=True, choices=["orbax", "hf"], help="output format")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="parameter dtype of the output (default: as stored / float32 for HF input)",
    )
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="HF output: safetensors file size limit")
    p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes of the local mesh (-1 = the rest)")
    return p


def main(argv=None) -> int:
    return cli.run_command(build_parser(), argv, run)


def run(args) -> int:
    try:
        mesh = sharding.make_mesh(sharding.MeshShape.parse(args.mesh))
        bar = tqdm(desc="reading", unit="tensor", file=sys.stderr)
        cfg, _, params = params_io.load_params_any(
            args.src, mesh, param_dtype=args.dtype, progress=lambda name: bar.update()
        )
        bar.close()
        bar = tqdm(desc="writing", unit="tensor", file=sys.stderr)
        source_tok = checkpoint.tokenizer_dir_of(args.src)
        if args.format == "hf":
            hf.save(
                params,
                cfg,
                args.dst,
                dtype=args.dtype,
                source_dir=source_tok,
                max_shard_bytes=int(args.max_shard_gb * 1024**3),
                progress=lambda name: bar.update(),
            )
        else:
            params_io.save_params_any(params, cfg, args.dst, "orbax", source_dir=source_tok, dtype=args.dtype)
        bar.close()
    except (hf.HFFormatError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"rlvr-convert: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.format} checkpoint of a {cfg.family} model ({cfg.num_layers} layers) to {args.dst}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

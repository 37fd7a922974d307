"""Train the built-in sentencepiece tokenizer, deterministically, on the built-in tasks' text.

    python tools/build_tokenizer.py                 # rebuild from tools/builtin_sp_corpus.txt.gz (the shipped corpus)
    python tools/build_tokenizer.py --check         # exits 1 if the shipped model differs from that rebuild
    python tools/build_tokenizer.py --from-builtin  # a new corpus from today's generators, and a new model

The corpus is pinned beside the tool: the built-in tasks' texts as they were when the shipped model was
trained (2026-11-26). Generators change (the science task's option order changed on 2026-12-05); a new
tokenizer changes every tiny model's tokens and so every measured tiny figure, so it is a deliberate step
(`--from-builtin`), not a side effect of editing a generator.

Ids: pad 0, unk 1, bos 2, eos 3 (`</s>`), then the user-defined `<|im_start|>`, `<|im_end|>`,
`<think>`, `</think>`. `<|im_end|>` ends a chat turn, so the adapter lists it first in `eos_ids`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys

from rlvr_jax.data import synthetic  # the installed package (scripts/setup.sh: pip install -e)

OUTPUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rlvr_jax", "data", "assets", "builtin_sp.model"
)
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin_sp_corpus.txt.gz")
VOCAB_SIZE = 1536
USER_DEFINED = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def builtin_corpus() -> list[str]:
    """Every line of every built-in conversation in chatml form, in a fixed order."""
    lines = []
    for split in synthetic.SPLITS:
        for record in synthetic.all_builtin(split):
            turns = [*record["messages"], {"role": "assistant", "content": record["metadata"]["reference"]}]
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)
            lines += [line for line in text.split("\n") if line]
    return lines


def shipped_corpus() -> list[str]:
    """The corpus the shipped model was trained on, one line a string."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def write_corpus(lines: list[str]) -> None:
    with open(CORPUS, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))


def train(lines: list[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """Serialized model; one thread and no sampling or shuffling keep the output byte-identical."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        user_defined_symbols=USER_DEFINED,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        # Identity normalisation and no dummy prefix: decode(encode(x)) == x for any text, and
        # prompt + completion tokens concatenate like the concatenated strings.
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=1 << 14,
        minloglevel=2,
    )
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare a rebuild with --output")
    parser.add_argument(
        "--from-builtin", action="store_true", help="pin a new corpus from the current generators first"
    )
    args = parser.parse_args(argv)
    if args.from_builtin:
        write_corpus(builtin_corpus())
    data = train(shipped_corpus())
    if args.check:
        with open(args.output, "rb") as f:
            same = f.read() == data
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from a rebuild'}")
        return 0 if same else 1
    with open(args.output, "wb") as f:
        f.write(data)
    print(f"wrote {args.output} ({len(data)} bytes, vocab {VOCAB_SIZE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

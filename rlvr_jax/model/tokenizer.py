"""One tokenizer adapter over `transformers.AutoTokenizer` (Hugging Face directories) and sentencepiece
(.model, the built-in): encode/decode without implicit BOS/EOS, special ids, the EOS set, and chat
templates in the `chatml` (Qwen) and `llama3` styles, or `hf` (the directory's own jinja template) with thinking.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from importlib import resources
from typing import Sequence

from rlvr_jax import storage

# Thinking format (REFERENCE.md). A full assistant turn reads `<think>\n{reasoning}\n</think>\n\n
# {answer}`. With thinking=True the generation prompt ends with `<think>\n`, so the model writes
# `{reasoning}\n</think>\n\n{answer}` and the verifier's gate needs only `</think>`; with
# thinking=False the prompt is the plain template and the model answers directly.
# `completion_for` turns a full reference turn into the text after the generation prompt.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_PROMPT = THINK_OPEN + "\n"

# Per style: the special token that identifies it (auto-detection) and the end-of-turn token.
# `encode` never adds BOS/EOS: the templates spell out every special token a model expects.
CHAT_STYLES = {
    "chatml": {"marker": "<|im_start|>", "end_of_turn": "<|im_end|>"},
    "llama3": {"marker": "<|start_header_id|>", "end_of_turn": "<|eot_id|>"},
}
CHATML_JINJA = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking %}{{- '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)
# Llama 3.0's template (3.1+ adds a dated system preamble, which we do not emit).
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% if enable_thinking is defined and enable_thinking %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


def completion_for(reference: str, thinking: bool) -> str:
    """The part of a full assistant turn `reference` that follows the generation prompt."""
    if thinking:
        if not reference.startswith(THINK_PROMPT):
            raise ValueError(f"a thinking reference must start with {THINK_PROMPT!r}: {reference[:40]!r}")
        return reference[len(THINK_PROMPT) :]
    # Without thinking the model answers directly: drop the reasoning block if there is one.
    if THINK_CLOSE in reference:
        return reference.rsplit(THINK_CLOSE, 1)[1].lstrip()
    return reference


class _SentencePiece:
    """Backend over a sentencepiece model (bytes); user-defined pieces are matched in raw text."""

    def __init__(self, model_bytes: bytes):
        import sentencepiece as spm  # local: one tokenizer format's library, loaded for that format
        from sentencepiece import sentencepiece_model_pb2 as spm_pb2  # local: with sentencepiece

        self.model_bytes = model_bytes
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size = self.sp.get_piece_size()
        self.vocab = {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        proto = spm_pb2.ModelProto()
        proto.ParseFromString(model_bytes)
        # Control and unknown pieces, and user-defined chat markers (`<|...|>`) are special;
        # `<think>` tags are text the verifier must see.
        self.special_ids = {
            i
            for i, p in enumerate(proto.pieces)
            if p.type in (2, 3) or (p.type == 4 and p.piece.startswith("<|") and p.piece.endswith("|>"))
        }
        self.bos = self.sp.id_to_piece(self.sp.bos_id()) if self.sp.bos_id() >= 0 else None
        self.eos = self.sp.id_to_piece(self.sp.eos_id()) if self.sp.eos_id() >= 0 else None
        self.pad = self.sp.id_to_piece(self.sp.pad_id()) if self.sp.pad_id() >= 0 else None
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


class _Transformers:
    """Backend over `transformers.AutoTokenizer` for a Hugging Face directory, so we encode exactly
    what transformers (and vLLM, which loads it the same way) encodes. Reading tokenizer.json
    ourselves is not enough: transformers picks the tokenizer class from the model type too (a Qwen2
    model's `Qwen2Tokenizer` splits digits one by one, whatever the file's pre-tokenizer says)."""

    def __init__(self, directory: str):
        from transformers import AutoTokenizer  # local: transformers is heavy (seconds to import); HF dirs only

        self.directory = directory
        self.tok = AutoTokenizer.from_pretrained(directory)
        self.vocab = self.tok.get_vocab()
        self.vocab_size = len(self.tok)  # with added tokens
        self.special_ids = {i for i, t in self.tok.added_tokens_decoder.items() if t.special}
        self.special_ids |= set(self.tok.all_special_ids)
        self.bos, self.eos, self.pad = self.tok.bos_token, self.tok.eos_token, self.tok.pad_token
        gen = _read_json(os.path.join(directory, "generation_config.json"))
        extra = gen.get("eos_token_id", [])
        self.extra_eos_ids = [extra] if isinstance(extra, int) else list(extra or [])
        self.chat_template = self.tok.chat_template  # from tokenizer_config.json or chat_template.jinja
        _warn_if_model_replaced(directory, self.tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        # No space clean-up: the text must round-trip exactly (the verifier reads it).
        return self.tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def id_to_piece(self, i: int) -> str:
        return self.tok.convert_ids_to_tokens(int(i))


def _warn_if_model_replaced(directory: str, tok) -> None:
    """Say so when the class transformers chose rebuilt tokenizer.json's model as another kind (a
    WordLevel file read by Qwen2Tokenizer becomes a BPE without merges): transformers, vLLM and we
    then all encode text the file's author never meant; `tokenizer_class: TokenizersBackend` in
    tokenizer_config.json keeps the file as it is."""
    wanted = _read_json(os.path.join(directory, "tokenizer.json")).get("model", {}).get("type")
    backend = getattr(tok, "backend_tokenizer", None)
    got = type(backend.model).__name__ if backend is not None else None
    if wanted and got and wanted != got:
        warnings.warn(
            f"{directory}: transformers loads it as {type(tok).__name__}, whose {got} model replaces the {wanted} "
            "model of tokenizer.json; set tokenizer_class to TokenizersBackend in tokenizer_config.json to keep the file",
            stacklevel=3,
        )


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


class Tokenizer:
    """encode/decode, special ids, chat templates; `kind` is `sentencepiece` or `hf`."""

    def __init__(self, backend, *, chat_style: str | None = None):
        self._b = backend
        self.kind = "sentencepiece" if isinstance(backend, _SentencePiece) else "hf"
        self.vocab_size: int = backend.vocab_size
        self.chat_style = chat_style or self._detect_style()
        if self.chat_style not in (*CHAT_STYLES, "hf", None):
            raise ValueError(f"unknown chat_style {chat_style!r}; expected one of {[*CHAT_STYLES, 'hf']}")
        if self.chat_style == "hf" and not backend.chat_template:
            raise ValueError("chat_style 'hf' needs a chat_template in tokenizer_config.json")
        if self.chat_style in CHAT_STYLES:
            for tok in (CHAT_STYLES[self.chat_style]["marker"], CHAT_STYLES[self.chat_style]["end_of_turn"]):
                if tok not in backend.vocab:
                    raise ValueError(f"chat_style {self.chat_style!r} needs {tok!r} in the vocabulary")
        # The end-of-turn token comes first: it is what a chat model emits to stop.
        eos = []
        if self.chat_style in CHAT_STYLES:
            eos.append(backend.vocab[CHAT_STYLES[self.chat_style]["end_of_turn"]])
        if backend.eos in backend.vocab:
            eos.append(backend.vocab[backend.eos])
        eos += getattr(backend, "extra_eos_ids", [])
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys(eos))
        if not self.eos_ids:
            raise ValueError("tokenizer has no EOS token and no chat end-of-turn token")
        # No pad token (Llama 3): pad with the first EOS; padded positions are masked anyway.
        self.pad_id: int = backend.vocab[backend.pad] if backend.pad in backend.vocab else self.eos_ids[0]
        self.bos_id: int | None = backend.vocab.get(backend.bos) if backend.bos else None
        self.special_ids = frozenset(backend.special_ids | set(self.eos_ids) | {self.pad_id})

    def _detect_style(self) -> str | None:
        for style, spec in CHAT_STYLES.items():
            if spec["marker"] in self._b.vocab:
                return style
        return "hf" if self._b.chat_template else None

    @property
    def end_of_turn(self) -> str:
        """The text that closes an assistant turn (append it to SFT targets)."""
        if self.chat_style in CHAT_STYLES:
            return CHAT_STYLES[self.chat_style]["end_of_turn"]
        return self.id_to_piece(self.eos_ids[0])

    def encode(self, text: str) -> list[int]:
        return self._b.encode(text)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self._b.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        return self._b.vocab.get(token)

    def id_to_piece(self, i: int) -> str:
        return self._b.id_to_piece(i)

    def apply_chat_template(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True, thinking: bool = False
    ) -> str:
        """The prompt string for `messages`; with thinking, the generation prompt opens `<think>\\n`."""
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i} needs string 'role' and 'content': {m!r}")
        if self.chat_style == "chatml":
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            gen = "<|im_start|>assistant\n"
        elif self.chat_style == "llama3":
            bos = self._b.bos if self._b.bos and self._b.bos in self._b.vocab else ""
            text = bos + "".join(
                f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>" for m in messages
            )
            gen = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        elif self.chat_style == "hf":
            return self._hf_template(messages, add_generation_prompt, thinking)
        else:
            raise ValueError("this tokenizer has no chat template: pass chat_style='chatml' or 'llama3'")
        if add_generation_prompt:
            text += gen + (THINK_PROMPT if thinking else "")
        return text

    def _hf_template(self, messages, add_generation_prompt, thinking) -> str:
        # The model's own template decides what thinking means (Qwen3: `enable_thinking`).
        return self._b.tok.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=thinking
        )

    def save(self, directory: str) -> None:
        """Write files `transformers.AutoTokenizer` (and vLLM) load, next to an exported model (local or gs://)."""
        with storage.staged_dir(directory) as local:
            self._save_local(local)

    def _save_local(self, directory: str) -> None:
        if self.kind == "hf":
            # transformers writes the class it resolved (e.g. Qwen2Tokenizer, chosen from a config.json
            # that is not copied), so the copy loads to the same tokenizer on its own.
            self._b.tok.save_pretrained(directory)
            gen = os.path.join(self._b.directory, "generation_config.json")
            if os.path.exists(gen):  # extra EOS ids live there
                shutil.copy(gen, os.path.join(directory, "generation_config.json"))
            return
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(self._b.model_bytes)
        hf_tok, added = _spm_to_tokenizers(self._b.model_bytes, self.special_ids)
        hf_tok.save(os.path.join(directory, "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 1 << 30,
            "bos_token": self._b.bos,
            "eos_token": self.end_of_turn,
            "pad_token": self._b.pad,
            "unk_token": self.id_to_piece(self._b.sp.unk_id()),
            "added_tokens_decoder": added,
            "chat_template": {"chatml": CHATML_JINJA, "llama3": LLAMA3_JINJA}.get(self.chat_style),
        }
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)


def _spm_to_tokenizers(model_bytes: bytes, special_ids):
    """A `tokenizers` object that encodes like the sentencepiece model, via transformers' converter."""
    from sentencepiece import sentencepiece_model_pb2  # local: one tokenizer format's library, loaded for that format
    from tokenizers import AddedToken  # local: only the Hugging Face export needs it
    from transformers.convert_slow_tokenizer import SpmConverter  # local: transformers is heavy; export only

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    # Control pieces and user-defined pieces are added tokens, as in converted Llama/Qwen files.
    added, decoder = [], {}
    for i, p in enumerate(proto.pieces):
        if p.type in (2, 3, 4):  # UNKNOWN, CONTROL, USER_DEFINED
            special = i in special_ids
            added.append(AddedToken(p.piece, special=special, normalized=False))
            decoder[str(i)] = {
                "content": p.piece,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": special,
            }
    tok.add_tokens(added)
    return tok, decoder


def load_tokenizer(path_or_dir: str, *, chat_style: str | None = None) -> Tokenizer:
    """A directory with tokenizer.json (preferred) or tokenizer.model, or a .model / .json file (local or
    gs://, copied into the local cache first)."""
    path = storage.local_copy(os.fspath(path_or_dir))
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return Tokenizer(_Transformers(path), chat_style=chat_style)
        models = sorted(n for n in os.listdir(path) if n.endswith(".model"))
        if not models:
            raise FileNotFoundError(f"{path}: no tokenizer.json or *.model file")
        path = os.path.join(path, models[0])
    if path.endswith(".json"):
        if os.path.basename(path) != "tokenizer.json":
            raise ValueError(f"{path}: pass the directory holding tokenizer.json")
        return Tokenizer(_Transformers(os.path.dirname(path) or "."), chat_style=chat_style)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    with open(path, "rb") as f:
        return Tokenizer(_SentencePiece(f.read()), chat_style=chat_style)


BUILTIN_MODEL = "builtin_sp.model"


def builtin_tokenizer() -> Tokenizer:
    """The shipped sentencepiece model for the built-in tasks (tools/build_tokenizer.py)."""
    data = resources.files("rlvr_jax.data").joinpath("assets", BUILTIN_MODEL).read_bytes()
    return Tokenizer(_SentencePiece(data))

"""Tokenizer adapter: round trips, special ids, chat templates against transformers, save/load, and
the shipped built-in sentencepiece model being exactly what tools/build_tokenizer.py makes."""

import importlib.util
import json
import os

import pytest
import sentencepiece as spm

from rlvr_jax.data import synthetic
from rlvr_jax.model import tokenizer as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The canonical ChatML template (transformers' chat-templating docs) and Llama 3.0's own template,
# written out here so our renderer is checked against templates we did not generate.
CHATML_DOC = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_OFFICIAL = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there \n"}],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\nb"},
        {"role": "user", "content": "Again, with\ttabs."},
    ],
]
TRICKY = [
    "",
    " ",
    "  two  spaces ",
    "\n\nnewlines\n",
    "tab\there",
    "digits 12345 and 3.14",
    "émoji 🙂 中文",
    "```python\ndef f(x):\n    return x * 2\n```",
    "<|im_start|>user\nhi<|im_end|>\n<think>\nok\n</think>",
]


def _make_hf_dir(path, style: str, *, with_pad: bool = True, gen_eos=None):
    """A tiny byte-level BPE tokenizer.json with the style's special tokens, plus its config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = {
        "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    }[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world what is two plus three", "be brief hi there again with tabs"] * 20, trainer)
    tok.add_tokens(["<think>", "</think>"])
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if style == "chatml":
        config.update(eos_token="<|im_end|>", pad_token="<|endoftext|>" if with_pad else None, chat_template=CHATML_DOC)
    else:
        config.update(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", chat_template=LLAMA3_OFFICIAL)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    if gen_eos is not None:
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": gen_eos}, f)
    return tok


def _load_build_tool():
    spec = importlib.util.spec_from_file_location("build_tokenizer", os.path.join(ROOT, "tools", "build_tokenizer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def builtin():
    return T.builtin_tokenizer()


def test_builtin_special_ids(builtin):
    tok = builtin
    assert tok.kind == "sentencepiece" and tok.chat_style == "chatml" and tok.vocab_size == 1536
    assert (tok.pad_id, tok.bos_id) == (0, 2)
    assert tok.eos_ids == (tok.token_to_id("<|im_end|>"), 3)
    for piece in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.encode(piece) == [tok.token_to_id(piece)], piece
    assert tok.encode("12345") == [tok.token_to_id(d) for d in "12345"]  # split_digits
    assert tok.end_of_turn == "<|im_end|>"


@pytest.mark.parametrize("text", TRICKY)
def test_builtin_round_trip_exact(builtin, text):
    assert builtin.decode(builtin.encode(text)) == text
    assert 1 not in builtin.encode(text)  # byte fallback: never <unk>


def test_builtin_round_trip_all_builtin_text(builtin):
    for domain in synthetic.DOMAINS:
        for r in synthetic.builtin_records(domain, "eval", 50):
            for text in (r["messages"][0]["content"], r["metadata"]["reference"]):
                assert builtin.decode(builtin.encode(text)) == text


def test_skip_special_tokens_keeps_think_tags(builtin):
    ids = builtin.encode("<think>\nx\n</think>\n\nAnswer: B<|im_end|>")
    assert builtin.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\n\nAnswer: B"
    assert builtin.decode(ids) == "<think>\nx\n</think>\n\nAnswer: B<|im_end|>"


def test_builtin_chat_template_and_thinking(builtin):
    msgs = [{"role": "user", "content": "hi"}]
    assert builtin.apply_chat_template(msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert builtin.apply_chat_template(msgs, thinking=True).endswith("<|im_start|>assistant\n<think>\n")
    assert builtin.apply_chat_template(msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"
    with pytest.raises(ValueError, match="role"):
        builtin.apply_chat_template([{"content": "x"}])


def test_completion_for():
    ref = "<think>\nr\n</think>\n\nanswer"
    assert T.completion_for(ref, thinking=True) == "r\n</think>\n\nanswer"
    assert T.completion_for(ref, thinking=False) == "answer"
    assert T.completion_for("plain", thinking=False) == "plain"
    with pytest.raises(ValueError):
        T.completion_for("no think", thinking=True)


@pytest.mark.parametrize("style,template", [("chatml", CHATML_DOC), ("llama3", LLAMA3_OFFICIAL)])
def test_chat_template_matches_transformers(tmp_path, style, template):
    from transformers import AutoTokenizer

    _make_hf_dir(tmp_path, style)
    ours = T.load_tokenizer(str(tmp_path))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.kind == "hf" and ours.chat_style == style
    for conv in CONVERSATIONS:
        for gen in (True, False):
            want = theirs.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(conv, add_generation_prompt=gen) == want
            # Thinking adds exactly the `<think>\n` opener after the generation prompt.
            think = ours.apply_chat_template(conv, add_generation_prompt=gen, thinking=True)
            assert think == want + ("<think>\n" if gen else "")
        text = ours.apply_chat_template(conv, thinking=True)
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == text


def test_hf_special_ids(tmp_path):
    _make_hf_dir(tmp_path / "q", "chatml", gen_eos=[7, 0])
    q = T.load_tokenizer(str(tmp_path / "q"))
    assert q.eos_ids[:1] == (q.token_to_id("<|im_end|>"),) and set(q.eos_ids) == {q.token_to_id("<|im_end|>"), 7, 0}
    assert q.pad_id == q.token_to_id("<|endoftext|>")
    _make_hf_dir(tmp_path / "l", "llama3")
    ll = T.load_tokenizer(str(tmp_path / "l"))
    assert ll.eos_ids == (ll.token_to_id("<|eot_id|>"), ll.token_to_id("<|end_of_text|>"))
    assert ll.pad_id == ll.eos_ids[0]  # no pad token: pad with the end-of-turn id
    assert ll.apply_chat_template([{"role": "user", "content": "x"}]).startswith("<|begin_of_text|>")
    assert ll.decode(ll.encode("<|eot_id|>hi"), skip_special_tokens=True) == "hi"
    with pytest.raises(ValueError, match="<\\|im_start\\|>"):
        T.load_tokenizer(str(tmp_path / "l"), chat_style="chatml")
    with pytest.raises(ValueError, match="unknown chat_style"):
        T.load_tokenizer(str(tmp_path / "l"), chat_style="vicuna")


def test_hf_style_uses_the_directory_template(tmp_path):
    _make_hf_dir(tmp_path, "chatml")
    tok = T.load_tokenizer(str(tmp_path), chat_style="hf")
    conv = CONVERSATIONS[1]
    assert tok.apply_chat_template(conv) == T.load_tokenizer(str(tmp_path)).apply_chat_template(conv)
    # A template kept in chat_template.jinja (newer transformers) is found too, and saved along.
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "chat_template.jinja").write_text(config.pop("chat_template"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok.save(str(tmp_path / "out"))
    again = T.load_tokenizer(str(tmp_path / "out"), chat_style="hf")
    assert again.apply_chat_template(conv) == tok.apply_chat_template(conv)
    assert again.eos_ids == tok.eos_ids and again.encode("hello world") == tok.encode("hello world")


def test_builtin_save_loads_in_transformers(tmp_path, builtin):
    from transformers import AutoTokenizer

    builtin.save(str(tmp_path))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    reloaded = T.load_tokenizer(str(tmp_path))
    texts = TRICKY + [r["metadata"]["reference"] for r in synthetic.builtin_records("code", "eval", 20)]
    for text in texts:
        ids = builtin.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        assert reloaded.encode(text) == ids
        assert theirs.decode(ids) == text
    conv = CONVERSATIONS[2]
    for thinking in (False, True):
        assert theirs.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        ) == builtin.apply_chat_template(conv, thinking=thinking)
    assert (reloaded.eos_ids[0], reloaded.pad_id, reloaded.chat_style) == (builtin.eos_ids[0], 0, "chatml")
    assert theirs.eos_token == "<|im_end|>" and theirs.pad_token_id == 0
    # A directory with only the .model loads through sentencepiece.
    os.remove(tmp_path / "tokenizer.json")
    assert T.load_tokenizer(str(tmp_path)).kind == "sentencepiece"


NUMBER_PROMPTS = [
    "what is 12 plus 345?",
    "2024 - 100 = 1924, and 3.14 x 12",
    "Compute 1234567890 * 12.",
    "<think>\n12 + 345 = 357\n</think>\n\nAnswer: \\boxed{357}",
]


def _make_qwen2_dir(path):
    """A random tiny Qwen2 as transformers 5 writes it: config.json of model type qwen2, a byte-level
    BPE tokenizer.json whose vocabulary merges digit runs ("Ġ12"), tokenizer_class TokenizersBackend."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["what is 12 plus 345 equals 357", "be brief 2024 hi 12 12 12 again 100 1924 3.14"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(["<think>", "</think>"])
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {
        "tokenizer_class": "TokenizersBackend",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHATML_DOC,
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    transformers.Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2).save_pretrained(path)
    return tok


def test_hf_directory_encodes_as_transformers_does(tmp_path):
    # transformers picks Qwen2Tokenizer from the model type and splits digits one by one; the
    # tokenizer.json alone merges them. We must encode what transformers encodes.
    from transformers import AutoTokenizer

    raw = _make_qwen2_dir(tmp_path)
    assert "Ġ12" in raw.get_vocab() and len(raw.encode(" 12").ids) == 1  # the file merges digits
    ours = T.load_tokenizer(str(tmp_path))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    assert type(theirs).__name__ == "Qwen2Tokenizer"
    for text in NUMBER_PROMPTS + TRICKY:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False) == theirs.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert ours.encode(" 12") == [ours.token_to_id("Ġ"), ours.token_to_id("1"), ours.token_to_id("2")]
    assert any(ours.encode(t) != raw.encode(t).ids for t in NUMBER_PROMPTS)  # the old adapter's answer differs
    assert ours.vocab_size == len(theirs) and ours.pad_id == theirs.pad_token_id
    assert ours.eos_ids[0] == ours.token_to_id("<|im_end|>")
    for conv in CONVERSATIONS + [[{"role": "user", "content": p}] for p in NUMBER_PROMPTS]:
        for gen in (True, False):
            want = theirs.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(conv, add_generation_prompt=gen) == want
            ids = theirs.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen, return_dict=False)
            assert ours.encode(want) == list(ids)
    # A saved copy (no config.json beside it, as in a checkpoint's tokenizer/) still splits digits.
    ours.save(str(tmp_path / "saved"))
    assert not os.path.exists(tmp_path / "saved" / "config.json")
    again = T.load_tokenizer(str(tmp_path / "saved"))
    for text in NUMBER_PROMPTS:
        assert again.encode(text) == ours.encode(text)
        assert AutoTokenizer.from_pretrained(str(tmp_path / "saved")).encode(text) == ours.encode(text)
    assert again.eos_ids == ours.eos_ids and again.pad_id == ours.pad_id


def test_warns_when_transformers_replaces_the_tokenizer_model(tmp_path):
    # Without a tokenizer_class, transformers 5 picks Qwen2Tokenizer for a qwen2/qwen3 model and
    # rebuilds a WordLevel file as a BPE without merges: it (and so we) no longer encode its words.
    import warnings

    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.save(str(tmp_path / "tokenizer.json"))
    transformers.Qwen3Config(vocab_size=8, hidden_size=16, num_hidden_layers=1).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    with pytest.warns(UserWarning, match="replaces the WordLevel model of tokenizer.json"):
        T.load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "tokenizer_class": "TokenizersBackend"})
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = T.load_tokenizer(str(tmp_path))
    assert kept.encode("hello world") == [3, 4]


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(str(tmp_path / "nope.model"))


def test_sentencepiece_training_is_deterministic():
    tool = _load_build_tool()
    lines = tool.builtin_corpus()
    assert tool.train(lines[::7], 600) == tool.train(lines[::7], 600)


def test_shipped_model_is_a_fresh_build():
    tool = _load_build_tool()
    with open(tool.OUTPUT, "rb") as f:
        shipped = f.read()
    assert tool.train(tool.shipped_corpus()) == shipped, "run `python tools/build_tokenizer.py` and ship the result"


def test_shipped_model_covers_todays_builtin_texts():
    # The corpus is pinned (a new tokenizer changes every tiny figure); the generators may move on, but
    # their text must still tokenize without unknown or byte-fallback pieces.
    tool = _load_build_tool()
    sp = spm.SentencePieceProcessor(model_file=tool.OUTPUT)
    lines = tool.builtin_corpus()
    bad = [line for line in lines if any(sp.is_unknown(i) or sp.is_byte(i) for i in sp.encode(line))]
    assert not bad, bad[:5]

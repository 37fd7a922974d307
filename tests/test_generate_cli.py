"""`rlvr-generate` (and `rlvr-eval`, which shares its engine flags) end to end on a tiny random Qwen3 model with a
small word-level tokenizer."""

import json
import os

import pytest

from rlvr_jax import sharding
from rlvr_jax.model import hf, params_io
from rlvr_jax.rollout import generate
from tests.hf_fixtures import COMMON, save_hf_model

SPECIAL = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
WORDS = ["user", "assistant", "system", "\n"] + [f"w{i}" for i in range(COMMON["vocab_size"] - 9)]


def write_tokenizer(directory):
    """A word-level tokenizer.json whose ids all fit the tiny model's vocabulary, with chatml markers."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    assert len(vocab) <= COMMON["vocab_size"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken("\n", normalized=False)])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "TokenizersBackend",
                "eos_token": "<|endoftext|>",
                "pad_token": "<pad>",
                "unk_token": "[UNK]",
            },
            f,
        )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_qwen3")
    save_hf_model("qwen3", d, seed=4)
    write_tokenizer(d)
    return str(d)


def run_json(capsys, *argv):
    assert generate.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_fields_and_n_samples(hf_dir, capsys):
    out = run_json(
        capsys,
        "--checkpoint",
        hf_dir,
        "--prompt",
        "w1 w2 w3",
        "--prompt",
        "w7",
        "--n",
        "3",
        "--max-new-tokens",
        "12",
        "--seed",
        "1",
    )
    samples = out["samples"]
    assert len(samples) == 6
    assert [s["prompt_index"] for s in samples] == [0, 0, 0, 1, 1, 1]
    assert [s["sample_index"] for s in samples] == [0, 1, 2] * 2
    for s in samples:
        assert 1 <= len(s["tokens"]) == len(s["logprobs"]) <= 12
        assert all(lp <= 0 for lp in s["logprobs"])
        assert s["finish_reason"] in ("stop", "length")
        assert (s["finish_reason"] == "stop") == (s["tokens"][-1] in out["sampling"]["stop_token_ids"])
        assert isinstance(s["text"], str)
    t = out["timing"]
    assert t["compile_s"] > 0 and t["generation_s"] > 0 and t["tokens_per_s"] > 0
    assert t["generated_tokens"] == sum(len(s["tokens"]) for s in samples)
    assert out["sampling"]["stop_token_ids"] == [3, 1]  # <|im_end|> (chat end of turn) then EOS
    # the KV pool sized to the request (--num-pages 0): 6 rows of at most 3 + 12 tokens, a page of 16 each
    e = out["engine"]
    assert e["pages"] == 6 and e["page_size"] == 16 and e["mib_per_device"] > 0
    assert 1 <= e["peak_pages"] <= e["pages"] and e["preemptions"] == 0
    assert 0 < e["slot_occupancy"] <= 1 and e["num_slots"] == 64 and e["compilations"] >= 3


def test_engine_flags_a_small_pool_preempts_and_the_tokens_stay(hf_dir, capsys):
    args = ("--checkpoint", hf_dir, "--prompt", "w1 w2 w3", "--prompt", "w7", "--n", "3", "--max-new-tokens", "12")
    roomy = run_json(capsys, *args, "--page-size", "4")
    tight = run_json(capsys, *args, "--page-size", "4", "--num-pages", "9", "--num-slots", "3", "--decode-burst", "2")
    assert tight["engine"]["pages"] == 8 and tight["engine"]["num_slots"] == 3
    assert tight["engine"]["preemptions"] > 0 and roomy["engine"]["preemptions"] == 0
    assert [s["tokens"] for s in tight["samples"]] == [s["tokens"] for s in roomy["samples"]]


def test_progress_bar_on_stderr(hf_dir, capsys):
    assert generate.main(["--checkpoint", hf_dir, "--prompt", "w1", "--max-new-tokens", "4", "--progress"]) == 0
    assert "rollout" in capsys.readouterr().err


def test_seeded_runs_repeat_and_seeds_differ(hf_dir, capsys):
    args = ("--checkpoint", hf_dir, "--prompt", "w4 w5", "--n", "4", "--max-new-tokens", "16")
    first = run_json(capsys, *args, "--seed", "3")
    again = run_json(capsys, *args, "--seed", "3")
    other = run_json(capsys, *args, "--seed", "4")
    tokens = lambda r: [s["tokens"] for s in r["samples"]]
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)


def test_chat_prompts_file_and_orbax_checkpoint(hf_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "w1 w2"}) + "\n\n" + json.dumps({"messages": [{"role": "user", "content": "w3"}]}) + "\n"
    )
    out = run_json(
        capsys,
        "--checkpoint",
        hf_dir,
        "--prompts",
        str(prompts),
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    )
    assert [s["prompt"] for s in out["samples"]] == [
        "<|im_start|>user\nw1 w2<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nw3<|im_end|>\n<|im_start|>assistant\n",
    ]
    # the same weights as our Orbax checkpoint (tokenizer kept in tokenizer/) give the same greedy tokens
    mesh = sharding.make_mesh(sharding.MeshShape(1, -1, 1))
    cfg, _, params = hf.load(hf_dir, mesh)
    orbax_dir = str(tmp_path / "orbax")
    params_io.save_params_any(params, cfg, orbax_dir, "orbax", source_dir=hf_dir)
    ours = run_json(
        capsys,
        "--checkpoint",
        orbax_dir,
        "--prompts",
        str(prompts),
        "--chat",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--mesh",
        "2,2,2",
    )
    assert [s["tokens"] for s in ours["samples"]] == [s["tokens"] for s in out["samples"]]


def test_thinking_opens_the_think_block_as_the_trainer_does(hf_dir, capsys):
    out = run_json(
        capsys,
        "--checkpoint",
        hf_dir,
        "--prompt",
        "w1",
        "--chat",
        "--thinking",
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
    )
    assert out["samples"][0]["prompt"] == "<|im_start|>user\nw1<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_text_output(hf_dir, capsys):
    assert generate.main(["--checkpoint", hf_dir, "--prompt", "w1", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("=== prompt 0 sample 0 (")
    assert "generated tokens/s" in captured.err


@pytest.mark.parametrize("problem", ["missing_checkpoint", "missing_tokenizer", "bad_prompts_line", "pool_too_small"])
def test_clear_errors_exit_2(problem, hf_dir, tmp_path, capsys):
    ckpt, extra = hf_dir, ["--prompt", "w1"]
    if problem == "missing_checkpoint":
        ckpt = str(tmp_path / "nowhere")
    elif problem == "missing_tokenizer":
        save_hf_model("qwen3", tmp_path / "no_tok")
        ckpt = str(tmp_path / "no_tok")
    elif problem == "pool_too_small":
        extra = ["--prompt", "w1 w2 w3 w4 w5", "--page-size", "4", "--num-pages", "2"]
    else:
        bad = tmp_path / "p.jsonl"
        bad.write_text('{"prompt": "w1"}\n{"text": "w2"}\n')
        extra = ["--prompts", str(bad)]
    capsys.readouterr()  # drop the setup's progress output
    assert generate.main(["--checkpoint", ckpt, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlvr-generate: error: ")
    want = {
        "missing_checkpoint": "no such checkpoint directory",
        "missing_tokenizer": "no tokenizer",
        "bad_prompts_line": "p.jsonl:2: expected an object",
        "pool_too_small": "but the pool holds 1",
    }[problem]
    assert want in err


def test_rlvr_eval_samples_with_the_engine_flags(hf_dir, tmp_path, capsys):
    from rlvr_jax.eval import evaluate

    out = tmp_path / "eval.json"
    common = ["--checkpoint", hf_dir, "--domains", "math", "--items-per-domain", "2", "--workers", "1"]
    assert (
        evaluate.main([*common, "--samples", "2", "--max-new-tokens", "4", "--num-slots", "3", "--output", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["per_domain"]["math"]["n_items"] == 2 and all(len(it["correct"]) == 2 for it in res["items"])
    capsys.readouterr()
    assert evaluate.main([*common, "--page-size", "4", "--num-pages", "2"]) == 2  # no prompt fits one page
    assert "rlvr-eval: error: prompt 0" in capsys.readouterr().err

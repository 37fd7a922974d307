"""Mixtures: exact resume (across an epoch boundary, with two processes, onto another host count),
per-epoch reshuffling, proportional vs explicit weights, prompt building with the length limit."""

import json
from collections import Counter

import pytest

from rlvr_jax.data import synthetic
from rlvr_jax.data.mixture import PromptMixture, build_mixture
from rlvr_jax.data.prompts import DOMAIN_PREFIXES, PromptConfig, build_prompts, prompt_messages, sft_example
from rlvr_jax.model.tokenizer import builtin_tokenizer

SIZES = {"math": 7, "code": 3, "science": 5, "if": 1}  # 16 prompts: an epoch is 4 batches of 4


def sources(sizes=SIZES):
    return {d: [{"id": f"{d}{i}"} for i in range(n)] for d, n in sizes.items()}


def ids(batch):
    return [x["id"] for x in batch]


def take(mix, n):
    return [ids(next(mix)) for _ in range(n)]


def roundtrip(state):
    return json.loads(json.dumps(state))  # what a checkpoint stores


@pytest.mark.parametrize("weights", [None, {"math": 2, "code": 1, "science": 1}])
def test_resume_is_exact_across_epoch_boundary(weights):
    full = take(PromptMixture(sources(), batch_size=4, seed=3, weights=weights), 12)
    for cut in (1, 3, 4, 5, 9):  # 4 = exactly at the epoch boundary, 3 and 5 on either side
        first = PromptMixture(sources(), batch_size=4, seed=3, weights=weights)
        head = take(first, cut)
        resumed = PromptMixture(sources(), batch_size=4, seed=3, weights=weights)
        resumed.set_state(roundtrip(first.get_state()))
        assert head + take(resumed, 12 - cut) == full, cut


def test_each_epoch_is_a_fresh_permutation_of_all_prompts():
    mix = PromptMixture(sources(), batch_size=4, seed=0)
    stream = [x for b in take(mix, 12) for x in b]
    everything = sorted(x["id"] for xs in sources().values() for x in xs)
    epochs = [stream[i * 16 : (i + 1) * 16] for i in range(3)]
    assert all(sorted(e) == everything for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    # Nearby seeds give unrelated streams (grain alone would make seed 1's epoch 0 seed 0's epoch 1).
    seed1 = [x for b in take(PromptMixture(sources(), batch_size=4, seed=1), 8) for x in b]
    assert seed1[:16] != epochs[0] and seed1[:16] != epochs[1] and seed1[16:] != epochs[2]
    assert mix.epochs() == {d: 3.0 for d in SIZES}


def test_two_processes_shard_the_global_stream_and_resume():
    single = take(PromptMixture(sources(), batch_size=4, seed=7), 10)
    hosts = [PromptMixture(sources(), batch_size=4, seed=7, process_index=p, process_count=2) for p in (0, 1)]
    per_host = [take(h, 10) for h in hosts]
    for step in range(10):
        a, b = per_host[0][step], per_host[1][step]
        assert len(a) == len(b) == 2 and not set(a) & set(b)
        assert a + b == single[step]  # hosts' blocks in process order are the one-host batch
    # Resume each host from a mid-run state, past the epoch boundary (step 4).
    for p in (0, 1):
        h = PromptMixture(sources(), batch_size=4, seed=7, process_index=p, process_count=2)
        head = take(h, 3)
        state = roundtrip(h.get_state())
        again = PromptMixture(sources(), batch_size=4, seed=7, process_index=p, process_count=2)
        again.set_state(state)
        assert head + take(again, 7) == per_host[p]
    # A two-host checkpoint restores onto one host at the same global position.
    one = PromptMixture(sources(), batch_size=4, seed=7)
    one.set_state(state)
    assert take(one, 7) == single[3:]


def test_proportional_vs_explicit_weights():
    prop = PromptMixture(sources(), batch_size=4, seed=0)
    assert prop.shares == {d: n / 16 for d, n in sorted(SIZES.items())}
    counts = Counter(x.rstrip("0123456789") for b in take(prop, 40) for x in b)
    assert counts == {d: 10 * n for d, n in SIZES.items()}  # 10 epochs: shares are exactly the sizes

    weights = {"math": 1, "code": 1, "science": 2, "if": 0}
    mix = PromptMixture(sources(), batch_size=4, seed=0, weights=weights)
    assert mix.domains == ["code", "math", "science"] and mix.shares["science"] == 0.5
    stream = [x for b in take(mix, 30) for x in b]
    counts = Counter(x.rstrip("0123456789") for x in stream)
    assert counts == {"math": 30, "code": 30, "science": 60}
    # Each domain is walked in full before it repeats (per-domain epochs).
    code = [x for x in stream if x.startswith("code")]
    assert all(sorted(code[i : i + 3]) == ["code0", "code1", "code2"] for i in range(0, 30, 3))


def test_state_mismatch_and_bad_config_errors():
    mix = PromptMixture(sources(), batch_size=4, seed=0)
    take(mix, 2)
    state = mix.get_state()
    with pytest.raises(ValueError, match="differs"):
        PromptMixture(sources(), batch_size=4, seed=1).set_state(state)
    with pytest.raises(ValueError, match="differs"):
        PromptMixture(sources({**SIZES, "if": 2}), batch_size=4, seed=0).set_state(state)
    with pytest.raises(ValueError, match="batch_size"):
        PromptMixture(sources(), batch_size=8, seed=0).set_state(state)
    with pytest.raises(ValueError, match="multiple of process_count"):
        PromptMixture(sources(), batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="without a source"):
        PromptMixture(sources(), batch_size=4, weights={"poetry": 1})
    with pytest.raises(ValueError, match="no prompts"):
        PromptMixture(sources(), batch_size=4, weights={"math": 0})


def test_prompts_template_prefix_system_and_length_limit():
    tok = builtin_tokenizer()
    recs = synthetic.builtin_records("math", "eval", 6) + synthetic.builtin_records("if", "eval", 6)
    by_domain, counts = build_prompts(recs, tok, PromptConfig(thinking=True))
    item = by_domain["math"][0]
    assert item["prompt"].endswith("<|im_start|>assistant\n<think>\n")
    assert item["prompt_ids"] == tok.encode(item["prompt"]) and item["record"]["id"] == recs[0]["id"]
    assert counts == {"prompts/kept/math": 6, "prompts/kept/if": 6}

    lengths = sorted(len(x["prompt_ids"]) for x in by_domain["if"])
    limit = lengths[3]
    _, counts = build_prompts(recs, tok, PromptConfig(max_prompt_tokens=limit, thinking=True))
    assert counts["prompts/dropped/if"] == sum(n > limit for n in lengths)
    assert counts["prompts/kept/if"] + counts["prompts/dropped/if"] == 6

    cfg = PromptConfig(system_prompt="You are terse.", domain_prefixes=True)
    msgs = prompt_messages(recs[0], cfg)
    assert msgs[0] == {"role": "system", "content": "You are terse."}
    assert msgs[1]["content"] == DOMAIN_PREFIXES["math"] + recs[0]["messages"][0]["content"]
    assert recs[0]["messages"][0]["content"] != msgs[1]["content"]  # the record is not mutated

    prompt_ids, target_ids = sft_example(recs[0], tok, PromptConfig(thinking=True))
    text = tok.decode(prompt_ids + target_ids)
    assert (
        text
        == tok.apply_chat_template(recs[0]["messages"], thinking=True)
        + recs[0]["metadata"]["reference"][len("<think>\n") :]
        + "<|im_end|>"
    )
    assert target_ids[-1] == tok.eos_ids[0]


def test_build_mixture_on_builtin_tasks():
    tok = builtin_tokenizer()
    recs = [r for d in synthetic.DOMAINS for r in synthetic.builtin_records(d, "eval", 20)]
    mix, counts = build_mixture(recs, tok, PromptConfig(), batch_size=8, seed=0)
    batch = next(mix)
    assert len(batch) == 8 and all(set(x) == {"record", "prompt", "prompt_ids"} for x in batch)
    assert sum(counts.values()) == 80 and mix.shares == {d: 0.25 for d in sorted(synthetic.DOMAINS)}

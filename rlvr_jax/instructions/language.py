"""Deterministic language identification (langdetect's profiles, a fixed seed, fixed order).

langdetect samples n-grams at random; its module-level detector is seeded only if someone sets
a global. We build a private factory, load the shipped profiles in sorted order, and seed it, so
the same text gets the same language in every worker process and every run.
"""

from __future__ import annotations

import functools
import os

_SEED = 0
# The codes langdetect 1.0.9 ships profiles for (a test pins this against the package).
LANGUAGES = tuple(
    "af ar bg bn ca cs cy da de el en es et fa fi fr gu he hi hr hu id it ja kn ko lt lv mk ml "
    "mr ne nl no pa pl pt ro ru sk sl so sq sv sw ta te th tl tr uk ur vi zh-cn zh-tw".split()
)


@functools.cache
def _factory():
    from langdetect.detector_factory import (  # local: profiles load on first use (slow)
        PROFILES_DIRECTORY,
        DetectorFactory,
    )

    factory = DetectorFactory()
    names = sorted(n for n in os.listdir(PROFILES_DIRECTORY) if not n.startswith("."))
    profiles = []
    for name in names:
        with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as f:
            profiles.append(f.read())
    factory.load_json_profile(profiles)
    factory.seed = _SEED  # instance attribute: the class-level global stays untouched
    return factory


def supported_languages() -> frozenset[str]:
    """ISO 639-1 codes (plus zh-cn / zh-tw) that `detect` can return."""
    return frozenset(_factory().get_lang_list())


def detect(text: str) -> str | None:
    """The most likely language code of `text`, or None if it has no letters to judge."""
    from langdetect.lang_detect_exception import LangDetectException  # local: with the detector, on first use

    detector = _factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None

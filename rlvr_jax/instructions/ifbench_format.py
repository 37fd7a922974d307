"""IFBench's format and repeat checks (rlvr_jax.instructions.ifbench holds the ids), written from the
reference's semantics (allenai/IFBench, instructions.py); `*_official` variants keep a reference quirk
that reward mode fixes."""

from __future__ import annotations

import re

from rlvr_jax.instructions import ifbench_text as t
from rlvr_jax.instructions.ifbench_words import P


# ---- format --------------------------------------------------------------------------------------
def parentheses(r, k, p):
    opened, deepest = [], 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in r:
        if ch in "([{":
            opened.append(ch)
            deepest = max(deepest, len(opened))
        elif ch in pairs:
            if opened and opened[-1] == pairs[ch]:
                opened.pop()
                if deepest >= 5:
                    return True
            else:
                opened, deepest = [], 0
    return False


def quotes(r, k, p):
    opened, deepest = [], 0
    for ch in r:
        if opened and ch == opened[-1]:
            opened.pop()
            if deepest - len(opened) >= 3:
                return True
        elif ch in "\"'":
            opened.append(ch)
            deepest = max(deepest, len(opened))
    return False


def punctuation(r, k, p):
    if not ("!?" in r or "?!" in r or "‽" in r):
        return False
    rest = r.replace("?!", "", 1)
    if len(rest) == len(r):
        rest = r.replace("!?", "", 1)
    return set(".,!?;:") <= set(rest)


def _option_list(options: str) -> tuple[bool, list[str]]:
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    sep = "/" if "/" in options else "or" if "or" in options else ","
    return strict, [o.strip() for o in options.split(sep)]


def options(r, k, p):
    strict, options = _option_list(k["options"])
    if strict:
        return r in options
    return any(o.strip(P + " ").lower() == r.strip(P + " ").lower() for o in options)


def newline(r, k, p):
    bare = t.strip_punctuation(r)
    return len([x for x in bare.strip().split("\n") if x != ""]) == len(bare.strip().split())


def emoji(r, k, p):
    s = t.split_sentences(r)
    for i, sentence in enumerate(s):
        bare = t.strip_punctuation(sentence).strip()
        if not bare:
            return False
        if t.is_emoji(bare[-1]) or t.is_emoji(bare[-2] if len(bare) > 1 else bare[-1]):
            continue
        nxt = t.strip_punctuation(s[i + 1]).strip() if i < len(s) - 1 else ""
        if not nxt or not t.is_emoji(nxt[0]):
            return False
    return True


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def stairs_official(r, k, p):
    lines = r.split("\n")
    for line in lines:  # as the reference: removing while iterating leaves one of two blank lines in a row
        if not line.strip():
            lines.remove(line)
    return all(_indent(b) > _indent(a) for a, b in zip(lines, lines[1:]))


def stairs(r, k, p):
    lines = [x for x in r.split("\n") if x.strip()]
    return len(lines) >= 2 and all(_indent(b) > _indent(a) for a, b in zip(lines, lines[1:]))


def quote_unquote(r, k, p):
    flat = "".join(r.replace("'\"'", "").split())
    if '""' in flat:
        return False
    rest = flat.strip("0123456789" + P.replace('"', ""))
    return not (rest and rest[-1] == '"')


def marker_list_official(r, k, p):  # anywhere in the text, twice
    return len(re.findall(re.escape(k["sep"]), r)) >= 2


def marker_list(r, k, p):  # reward: two lines that start with the marker, as the instruction's checker means
    return sum(1 for x in r.split("\n") if x.strip().startswith(k["sep"])) >= 2


def thesis(r, k, p):
    i = r.find("<i>")
    i = r.find("<em>") if i == -1 else i
    if i == -1:
        return False
    rest = r[i:]
    end = rest.find("</i>")
    end = rest.find("</em>") if end == -1 else end
    # As the reference: 3 and 4 characters skipped for the tags whichever tag it was.
    return end != -1 and rest[3:end].strip() != "" and rest[end + 4 :].strip() != ""


def sub_bullets_official(r, k, p):  # no `*` at all passes
    return all("-" in b for b in r.split("*")[1:])


def sub_bullets(r, k, p):  # reward: at least one `*` bullet line, each followed by a `-` line before the next
    groups, current = [], None
    for line in r.split("\n"):
        s = line.strip()
        if s.startswith("*") and not s.startswith("**"):
            current = [0]
            groups.append(current)
        elif s.startswith("-") and current is not None:
            current[0] += 1
    return bool(groups) and all(g[0] > 0 for g in groups)


def some_bullets(r, k, p):
    # As the reference: a text line with no sentence (a blank line) ends the text part, and any line
    # that is not a bullet after the text part (a blank line between bullets too) fails.
    in_text, sentences, bullets = True, 0, 0
    for line in r.split("\n"):
        if line.strip().startswith("*"):
            in_text = False
            if sentences < 2:
                return False
            bullets += 1
        elif in_text:
            found = t.split_sentences(line.strip())
            sentences += len(found)
            in_text = bool(found)
        else:
            return False
    return bullets >= 2


def title_case(r, k, p):
    for w in t.word_tokens(r):
        if not w[0].isalpha():
            continue
        if len(w) == 1:
            if w.islower():
                return False
        elif w[0].islower() and (w[1:].isupper() or w[1:].islower()):
            return False
    return True


def repeat_change_official(r, k, p):
    prompt = k["prompt_to_repeat"]
    return r != prompt and prompt.split()[1:] == r.split()[1:]


def repeat_change(r, k, p):  # reward: the first word must change (the reference accepts a changed space)
    prompt, words = k["prompt_to_repeat"].split(), r.split()
    return bool(words) and words[0].lower() != prompt[0].lower() and prompt[1:] == words[1:]


def repeat_span(r, k, p):
    return r.strip().lower() == k["prompt_to_repeat"][k["n_start"] : k["n_end"] + 1].strip().lower()


def template(r, k, p):
    return all(label in r for label in ("My Answer:", "My Conclusion:", "Future Outlook:"))

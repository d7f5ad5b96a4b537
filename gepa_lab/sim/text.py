"""Generic text utilities: word pieces, a generic English stop-word list, a light suffix stemmer,
and the deterministic token count reported in ``usage``.

Nothing here is specific to any task or corpus.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

_WORD_RE = re.compile(r"[a-z0-9]+")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)

# A generic English stop-word list (function words, auxiliaries, pronouns, common chat filler and the
# apostrophe-less forms of contractions, since words are split on non-alphanumerics after dropping
# apostrophes).
STOP_WORDS = frozenset(
    """
    a about above after again against all am an and any are aren arent as at be because been before
    being below between both but by can cannot cant could couldn couldnt did didn didnt do does doesn
    doesnt doing don dont down during each few for from further had hadn hadnt has hasn hasnt have haven
    havent having he hed hell hes her here heres hers herself him himself his how hows i id ill im ive
    if in into is isn isnt it its itself lets me more most mustn mustnt my myself no nor not of off on
    once only or other ought our ours ourselves out over own same shan shant she shed shell shes should
    shouldn shouldnt so some such than that thats the their theirs them themselves then there theres
    these they theyd theyll theyre theyve this those through to too under until up very was wasn wasnt
    we wed well were weve weren werent what whats when whens where wheres which while who whos whom why
    whys will with won wont would wouldn wouldnt you youd youll youre youve your yours yourself
    yourselves also just can may might must shall yet still even ever much many every via per
    get gets got getting go goes going gone went make makes made making let know knew need needs want
    wants wanted like would please thanks thank thankyou hi hello hey ok okay yes yeah one two something
    anything nothing someone anyone way thing things able tell help really sure right now today time
    use used using see seem seems s t d ll m re ve y
    """.split()
)


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words; apostrophes are dropped first (``hasn't`` -> ``hasnt``)."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return _WORD_RE.findall(text)


TRUNCATE = 0  # keep at most this many characters of a stem (0 = no truncation)


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A light, generic suffix stemmer: arrive/arrived/arriving/arrives -> arriv."""
    w = word.lower()
    if len(w) <= 3 or w.isdigit():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("sses"):
        w = w[:-2]
    elif w.endswith("ing") and len(w) > 5:
        w = w[:-3]
        if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
    elif w.endswith("ed") and len(w) > 4:
        w = w[:-2]
        if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
            w = w[:-1]
    elif w.endswith("es") and len(w) > 4 and w[-3] in "sxz":
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        w = w[:-1]
    if w.endswith("ly") and len(w) > 5:
        w = w[:-2]
    elif w.endswith("al") and len(w) > 6:
        w = w[:-2]
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    if w.endswith("y") and len(w) > 4:
        w = w[:-1] + "i"
    if TRUNCATE and len(w) > TRUNCATE:
        w = w[:TRUNCATE]
    return w


def content_stems(text: str, extra_stop: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Stems of the non-stop words of ``text``, in order, without duplicates."""
    out: list[str] = []
    seen: set[str] = set()
    for w in words(text):
        if w in STOP_WORDS or len(w) < 2:
            continue
        s = stem(w)
        if s in extra_stop or s in seen:
            continue
        seen.add(s)
        out.append(s)
    return out


def content_words(text: str) -> list[tuple[str, str]]:
    """(stem, surface word) pairs of the non-stop words of ``text``, first occurrence of each stem."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for w in words(text):
        if w in STOP_WORDS or len(w) < 2:
            continue
        s = stem(w)
        if s in seen:
            continue
        seen.add(s)
        out.append((s, w))
    return out


@lru_cache(maxsize=100_000)
def label_stems(label: str) -> tuple[str, ...]:
    """Stems of a label name such as ``parcel_delay`` or ``Parcel Delay`` (stop words dropped)."""
    parts = re.split(r"[_\-\s/]+|(?<=[a-z])(?=[A-Z])", label)
    return tuple(content_stems(" ".join(parts)))


def count_tokens(text: str) -> int:
    """The simulator's token count: word pieces (runs of letters/digits/underscore) plus each
    punctuation character, i.e. ``len(re.findall(r"\\w+|[^\\w\\s]", text))``."""
    return len(_TOKEN_RE.findall(text or ""))


@lru_cache(maxsize=4096)
def count_message_tokens(text: str) -> int:
    """count_tokens of one chat message, cached: a candidate's system prompt, and each example's user message,
    come back on every evaluation."""
    return count_tokens(text)


def prompt_token_count(messages: list) -> int:
    """count_tokens of the messages' contents joined by newlines, counted per message (a newline is no token)."""
    return sum(
        count_message_tokens(m.get("content", "") if isinstance(m.get("content"), str) else json.dumps(m.get("content")))
        for m in messages
        if isinstance(m, dict)
    )

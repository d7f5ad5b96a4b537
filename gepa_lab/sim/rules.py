"""The plain-English rule block that carries learned knowledge inside an instruction.

The reflection model writes it, the task model reads it; the simulator keeps no other state. Format
(leading whitespace and ``-``/``*`` bullets are optional; cue counts are optional)::

    Classify the intent of a customer-support message.

    Choose exactly one of the allowed labels. Cues learned from feedback ((xN) = seen in N examples):
    - If the query mentions "arrive" (x3), "track" (x2) or "courier", answer parcel_delay.
    - If the query mentions "locked" or "password", answer account_locked.
    Words that do not point to any particular label: "order", "help".

Each ``If ... mentions ..., answer LABEL.`` line is a rule; every quoted phrase is a cue (a word or a
short phrase, matched after stemming). The optional ``(xN)`` after a cue is how many examples
supported it. The optional last line lists words the task model should ignore.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field

from .text import content_stems

RULES_HEADER = "Choose exactly one of the allowed labels. Cues learned from feedback ((xN) = seen in N examples):"
IGNORE_PREFIX = "Words that do not point to any particular label:"

_RULE_RE = re.compile(
    r"^\s*(?:[-*\u2022]|\d+[.)])?\s*If (?:the |a |an )?(?:[\w ]+? )?(?:mentions|contains|says|includes|"
    r"uses|is about|talks about|refers to)\s+(?P<cues>.+?),?\s+(?:then\s+)?(?:answer|choose|pick|output|"
    r"classify (?:it )?as|label (?:it )?as|the (?:answer|label|intent) is)\s*:?\s*"
    r"[`\"']?(?P<label>[^`\"'\s,;]+?)[`\"']?\s*\.?\s*$",
    re.IGNORECASE,
)
_CUE_RE = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d](?:\s*\((?:x|\u00d7)?\s*(\d+)(?:\s*x)?\))?")
_IGNORE_RE = re.compile(
    r"^\s*(?:[-*]\s*)?(?:Words that do not point to any particular label|Ignore(?: these| the)?(?: generic)? words)"
    r"\s*:?(?P<cues>.*)$",
    re.IGNORECASE,
)


@dataclass
class RuleSet:
    """label -> ordered {cue surface text: count}; plus ignored words."""

    cues: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def copy(self) -> "RuleSet":
        return RuleSet({k: dict(v) for k, v in self.cues.items()}, list(self.ignored))

    def __bool__(self) -> bool:
        return bool(self.cues) or bool(self.ignored)


def split_instruction(instruction: str) -> tuple[str, RuleSet]:
    """Split an instruction into (task text without the rule block, parsed rules)."""
    rules = RuleSet()
    kept: list[str] = []
    for line in instruction.splitlines():
        m = _RULE_RE.match(line)
        if m:
            label = m.group("label").strip()
            bucket = rules.cues.setdefault(label, {})
            for cm in _CUE_RE.finditer(m.group("cues")):
                cue = cm.group(1).strip().lower()
                if not cue:
                    continue
                count = int(cm.group(2)) if cm.group(2) else 1
                bucket[cue] = max(bucket.get(cue, 0), count)
            continue
        im = _IGNORE_RE.match(line)
        if im:
            for cm in _CUE_RE.finditer(im.group("cues")):
                cue = cm.group(1).strip().lower()
                if cue and cue not in rules.ignored:
                    rules.ignored.append(cue)
            continue
        if line.strip().startswith("Choose exactly one of the allowed labels. Cues learned"):
            continue
        kept.append(line)
    task_text = "\n".join(kept).strip()
    task_text = re.sub(r"\n{3,}", "\n\n", task_text)
    return task_text, rules


def parse_rules(instruction: str) -> RuleSet:
    return split_instruction(instruction)[1]


def _fmt_cue(cue: str, count: int) -> str:
    return f'"{cue}" (x{count})' if count > 1 else f'"{cue}"'


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def render_instruction(task_text: str, rules: RuleSet, subject: str = "query") -> str:
    lines = [task_text.strip() or "Solve the task."]
    if rules.cues:
        lines += ["", RULES_HEADER]
        for label, cues in rules.cues.items():
            if not cues:
                continue
            items = [_fmt_cue(c, n) for c, n in cues.items()]
            lines.append(f"- If the {subject} mentions {_join(items)}, answer {label}.")
    if rules.ignored:
        if not rules.cues:
            lines.append("")
        lines.append(f"{IGNORE_PREFIX} " + ", ".join(f'"{w}"' for w in rules.ignored) + ".")
    return "\n".join(lines)


@lru_cache(maxsize=100_000)
def cue_stems(cue: str) -> tuple[str, ...]:
    return tuple(content_stems(cue))

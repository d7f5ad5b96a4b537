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
supported it. The optional last line lists words the task model should ignore. A label with spaces is
quoted: ``answer "dark red".``

A predictor with several output fields gets rules that name the field they set, and ignored words per field::

    Values learned from feedback, per output field ((xN) = seen in N examples):
    - If the item mentions "ruby" (x2) or "cherry", set color to "dark red".
    Words that do not point to any particular value of color: "shade".
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field

from .text import content_stems

RULES_HEADER = "Choose exactly one of the allowed labels. Cues learned from feedback ((xN) = seen in N examples):"
IGNORE_PREFIX = "Words that do not point to any particular label:"
FIELD_RULES_HEADER = "Values learned from feedback, per output field ((xN) = seen in N examples):"
_MENTIONS = r"^\s*(?:[-*\u2022]|\d+[.)])?\s*If (?:the |a |an )?(?:[\w ]+? )?(?:mentions|contains|says|includes|uses|is about|talks about|refers to)\s+(?P<cues>.+?),?\s+(?:then\s+)?"
_QUOTED_VALUE = r"\"(?P<quoted>[^\"]+)\""

_RULE_RE = re.compile(
    _MENTIONS + r"(?:answer|choose|pick|output|classify (?:it )?as|label (?:it )?as|the (?:answer|label|intent) is)"
    r"\s*:?\s*(?:" + _QUOTED_VALUE + r"|[`\"']?(?P<label>[^`\"'\s,;]+?)[`\"']?)\s*\.?\s*$",
    re.IGNORECASE,
)
_FIELD_RULE_RE = re.compile(
    _MENTIONS + r"set (?P<field>\w+) to\s*:?\s*(?:" + _QUOTED_VALUE + r"|(?P<label>[^\s\"]+?))\s*\.?\s*$",
    re.IGNORECASE,
)
_BARE_LABEL_RE = re.compile(r"^[^`\"'\s,;]*[^`\"'\s,;.]$")  # written without quotes, read back the same
_CUE_RE = re.compile(r"[\"\u201c]([^\"\u201d]+)[\"\u201d](?:\s*\((?:x|\u00d7)?\s*(\d+)(?:\s*x)?\))?")
_IGNORE_RE = re.compile(
    r"^\s*(?:[-*]\s*)?(?:Words that do not point to any particular (?:label|value of (?P<field>\w+))|"
    r"Ignore(?: these| the)?(?: generic)? words)\s*:?(?P<cues>.*)$",
    re.IGNORECASE,
)


@dataclass
class RuleSet:
    """label -> ordered {cue surface text: count}; plus ignored words; plus the rules of named output fields
    (field -> its own RuleSet, whose labels are that field's values)."""

    cues: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    fields: dict[str, "RuleSet"] = field(default_factory=dict)

    def copy(self) -> "RuleSet":
        return RuleSet({k: dict(v) for k, v in self.cues.items()}, list(self.ignored), {f: r.copy() for f, r in self.fields.items()})

    def merged(self, other: "RuleSet") -> "RuleSet":
        """These cues and ignored words plus another set's (a cue in both keeps the larger count)."""
        out = RuleSet({k: dict(v) for k, v in self.cues.items()}, list(self.ignored))
        for label, cues in other.cues.items():
            bucket = out.cues.setdefault(label, {})
            for cue, count in cues.items():
                bucket[cue] = max(bucket.get(cue, 0), count)
        out.ignored += [w for w in other.ignored if w not in out.ignored]
        return out

    def __bool__(self) -> bool:
        return bool(self.cues) or bool(self.ignored) or bool(self.fields)


def _read_cues(text: str, bucket: dict[str, int]) -> None:
    for cm in _CUE_RE.finditer(text):
        cue = cm.group(1).strip().lower()
        if not cue:
            continue
        count = int(cm.group(2)) if cm.group(2) else 1
        bucket[cue] = max(bucket.get(cue, 0), count)


def split_instruction(instruction: str) -> tuple[str, RuleSet]:
    """Split an instruction into (task text without the rule block, parsed rules)."""
    rules = RuleSet()
    kept: list[str] = []
    for line in instruction.splitlines():
        m = _FIELD_RULE_RE.match(line)
        owner = rules.fields.setdefault(m.group("field"), RuleSet()) if m else rules
        m = m or _RULE_RE.match(line)
        if m:
            label = (m.group("quoted") or m.group("label")).strip()
            _read_cues(m.group("cues"), owner.cues.setdefault(label, {}))
            continue
        im = _IGNORE_RE.match(line)
        if im:
            owner = rules.fields.setdefault(im.group("field"), RuleSet()) if im.group("field") else rules
            for cm in _CUE_RE.finditer(im.group("cues")):
                cue = cm.group(1).strip().lower()
                if cue and cue not in owner.ignored:
                    owner.ignored.append(cue)
            continue
        if line.strip().startswith(("Choose exactly one of the allowed labels. Cues learned", FIELD_RULES_HEADER)):
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


def _fmt_label(label: str) -> str:
    return label if _BARE_LABEL_RE.match(label) else f'"{label}"'


def _ignored_line(prefix: str, words: list[str]) -> str:
    return f"{prefix} " + ", ".join(f'"{w}"' for w in words) + "."


def render_instruction(task_text: str, rules: RuleSet, subject: str = "query") -> str:
    lines = [task_text.strip() or "Solve the task."]
    if rules.cues:
        lines += ["", RULES_HEADER]
        for label, cues in rules.cues.items():
            if not cues:
                continue
            items = [_fmt_cue(c, n) for c, n in cues.items()]
            lines.append(f"- If the {subject} mentions {_join(items)}, answer {_fmt_label(label)}.")
    if rules.ignored:
        if not rules.cues:
            lines.append("")
        lines.append(_ignored_line(IGNORE_PREFIX, rules.ignored))
    if any(rules.fields.values()):
        lines += ["", FIELD_RULES_HEADER]
        for name, own in rules.fields.items():
            for label, cues in own.cues.items():
                if cues:
                    items = [_fmt_cue(c, n) for c, n in cues.items()]
                    lines.append(f'- If the {subject} mentions {_join(items)}, set {name} to "{label}".')
            if own.ignored:
                lines.append(_ignored_line(f"Words that do not point to any particular value of {name}:", own.ignored))
    return "\n".join(lines)


@lru_cache(maxsize=100_000)
def cue_stems(cue: str) -> tuple[str, ...]:
    return tuple(content_stems(cue))

"""Answer a task prompt: one value per output field, from the request text alone.

* ``Literal[...]`` fields (classification): every allowed label gets a score = word overlap between
  the input text and the label's name (stems, stop words dropped) + evidence from the rules in the
  instruction (see ``rules.py``). A cue that the rules list under fewer labels counts more; a cue seen in
  more examples counts more. The best score wins; ties go to the label whose name is covered best, then
  to the earliest label in the list.
* ``str`` fields that the rules give values for (rules naming the field, or rules without a field name when
  it is the prompt's only output besides ``reasoning``): chosen the same way among those values.
* ``int``/``float`` fields: the last number in the inputs (no arithmetic is done).
* ``bool``: True if the inputs share a content word with the instruction, else False.
* other ``str`` fields (``reasoning`` etc.): a short sentence naming the evidence used.
* ``list``/``dict``/other: an empty JSON value.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from dataclasses import dataclass
from typing import Any

from .prompts import Field, ParsedPrompt
from .rules import RuleSet, cue_stems, parse_rules
from .text import content_stems, label_stems

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class ScoreParams:
    name_weight: float = 1.0  # per label-name word found in the input
    cue_weight: float = 0.5  # scale of rule evidence (a name word counts 1)
    count_power: float = 0.5  # evidence grows like count ** power
    spec_power: float = 1.0  # specificity: (share of the cue's examples under this label) ** power
    name_idf_power: float = 0.0  # a name word shared by k label names weighs (1 / k) ** power
    ignore_in_names: bool = True  # ignored words are ignored in label names too
    single_weight: float = 1.0  # factor for cues seen once only
    cue_name_idf_power: float = 0.0  # a cue word found in k label names weighs (1 / k) ** power


PARAMS = ScoreParams()


@dataclass
class LabelChoice:
    label: str
    score: float
    evidence: list[str]


class LabelModel:
    """Label names + rules of one instruction, compiled for fast scoring of many inputs."""

    def __init__(self, labels: tuple[str, ...], rules: RuleSet, params: ScoreParams = PARAMS):
        self.labels = labels
        self.params = params
        self.ignored = frozenset(s for w in rules.ignored for s in content_stems(w))
        self.names: list[tuple[str, ...]] = []
        self.name_index: dict[str, list[int]] = {}  # stem -> labels whose name has it
        for i, label in enumerate(labels):
            stems = label_stems(label)
            if params.ignore_in_names:
                name = tuple(s for s in stems if s not in self.ignored) or stems
            else:
                name = stems
            self.names.append(name)
            for s in set(name):
                self.name_index.setdefault(s, []).append(i)
        self.name_weight = {
            s: params.name_weight * (1.0 / len(idx)) ** params.name_idf_power for s, idx in self.name_index.items()
        }
        canon = {lab.lower(): i for i, lab in enumerate(labels)}
        per_cue: dict[tuple[str, ...], dict[int, int]] = {}
        for rule_label, cues in rules.cues.items():
            i = canon.get(rule_label.lower())
            if i is None:
                continue
            for cue, count in cues.items():
                key = cue_stems(cue)
                if not key:
                    continue
                d = per_cue.setdefault(key, {})
                d[i] = d.get(i, 0) + max(1, count)
        name_df: dict[str, int] = {}
        for i, label in enumerate(labels):
            for s in set(label_stems(label)):
                name_df[s] = name_df.get(s, 0) + 1
        # first stem -> [(cue stems, [(label index, weight)])]
        self.cues: dict[str, list[tuple[tuple[str, ...], list[tuple[int, float]]]]] = {}
        for key, per_label in per_cue.items():
            total = sum(per_label.values())
            weights = [
                (
                    i,
                    params.cue_weight
                    * ((n / total) ** params.spec_power)
                    * (n**params.count_power)
                    * (params.single_weight if n == 1 else 1.0)
                    * (1.0 / max(1, max((name_df.get(k, 1) for k in key), default=1))) ** params.cue_name_idf_power,
                )
                for i, n in per_label.items()
            ]
            self.cues.setdefault(key[0], []).append((key, weights))

    def choose(self, text: str) -> LabelChoice:
        labels = self.labels
        if not labels:
            return LabelChoice("", 0.0, [])
        all_stems = set(_stems_of(text))
        present = all_stems - self.ignored
        name_present = present if self.params.ignore_in_names else all_stems
        cue_scores: dict[int, float] = {}
        cue_evidence: dict[int, list[str]] = {}
        for s in present:
            for key, weights in self.cues.get(s, ()):
                if len(key) > 1 and not all(k in present for k in key):
                    continue
                for i, w in weights:
                    cue_scores[i] = cue_scores.get(i, 0.0) + w
                    cue_evidence.setdefault(i, []).append(" ".join(key))
        name_w = self.name_weight
        # only labels with some evidence can beat label 0 (the tie-break winner among the rest)
        candidates = {0} | set(cue_scores)
        for s in name_present:
            candidates.update(self.name_index.get(s, ()))
        best: tuple[float, float, int] | None = None
        best_i = 0
        best_hits: list[str] = []
        for i in sorted(candidates):
            name = self.names[i]
            hits = [s for s in name if s in name_present]
            score = sum(name_w[h] for h in hits) + cue_scores.get(i, 0.0)
            coverage = len(hits) / len(name) if name else 0.0
            key = (round(score, 9), coverage, -i)
            if best is None or key > best:
                best, best_i, best_hits = key, i, hits
        return LabelChoice(labels[best_i], best[0] if best else 0.0, best_hits + cue_evidence.get(best_i, []))


@lru_cache(maxsize=20_000)
def _stems_of(text: str) -> tuple[str, ...]:
    return tuple(content_stems(text))


def compile_model(instruction: str, labels: tuple[str, ...], params: ScoreParams | None = None) -> LabelModel:
    return _compile(instruction, labels, params or PARAMS)


@lru_cache(maxsize=256)
def _compile(instruction: str, labels: tuple[str, ...], params: ScoreParams) -> LabelModel:
    return LabelModel(labels, parse_rules(instruction), params)


@lru_cache(maxsize=256)
def field_model(instruction: str, field: str, labels: tuple[str, ...] | None, sole_answer: bool) -> LabelModel | None:
    """The model of one output field. labels: a Literal field's values (rules without a field name apply, plus
    those naming it); None for a str field, whose values are those its rules name (rules without a field name
    when it is the prompt's only answer field); None when there are none."""
    rules = parse_rules(instruction)
    own = rules.fields.get(field)
    if labels is not None:
        return LabelModel(labels, rules.merged(own), PARAMS) if own else compile_model(instruction, labels)
    learned = own if own else (rules if sole_answer else None)
    if learned is None or not learned.cues:
        return None
    return LabelModel(tuple(learned.cues), learned, PARAMS)


def choose_label(text: str, labels: list[str], rules: RuleSet, params: ScoreParams = PARAMS) -> LabelChoice:
    return LabelModel(tuple(labels), rules, params).choose(text)


def last_number(text: str) -> float | None:
    nums = _NUMBER_RE.findall(text)
    if not nums:
        return None
    try:
        return float(nums[-1].replace(",", ""))
    except ValueError:
        return None


def _format_number(value: float | None, kind: str) -> Any:
    if value is None:
        value = 0.0
    if kind == "int":
        return int(round(value))
    return float(value)


def answer(prompt: ParsedPrompt) -> list[tuple[str, Any]]:
    """Return [(output field name, value)] in the prompt's output order."""
    text = "\n".join(v for v in prompt.values.values() if isinstance(v, str))
    outputs = prompt.outputs or [Field(name="answer", type="str")]
    choices: dict[str, LabelChoice] = {}
    sole_answer = len([f for f in outputs if f.name != "reasoning"]) == 1
    for f in outputs:
        values = f.literal_values
        if values is not None or (f.base_type == "str" and f.name != "reasoning"):
            model = field_model(prompt.instruction, f.name, None if values is None else tuple(values), sole_answer)
            if model is not None:
                choices[f.name] = model.choose(text)
    result: list[tuple[str, Any]] = []
    for f in outputs:
        kind = f.base_type
        if f.name in choices:
            result.append((f.name, choices[f.name].label))
        elif kind in ("int", "float"):
            result.append((f.name, _format_number(last_number(text), kind)))
        elif kind == "bool":
            instr = set(content_stems(prompt.instruction))
            result.append((f.name, bool(instr & set(content_stems(text)))))
        elif kind == "list":
            result.append((f.name, []))
        elif kind == "dict":
            result.append((f.name, {}))
        else:
            result.append((f.name, _sentence(f, text, choices, prompt)))
    return result


def _sentence(f: Field, text: str, choices: dict[str, LabelChoice], prompt: ParsedPrompt) -> str:
    if choices:
        parts = []
        for name, choice in choices.items():
            if choice.evidence:
                ev = ", ".join(f'"{e}"' for e in choice.evidence[:4])
                parts.append(f"The input mentions {ev}, which points to {name} = {choice.label}.")
            else:
                parts.append(f"No cue in the input is decisive, so {name} = {choice.label} is the closest match.")
        return " ".join(parts)
    num = last_number(text)
    if num is not None and any(o.base_type in ("int", "float") for o in prompt.outputs):
        shown = int(num) if float(num).is_integer() else num
        return f"The last number given in the question is {shown}, so that is the answer."
    words = content_stems(text)[:6]
    if words:
        return "The input is about " + ", ".join(words) + "."
    return "There is not enough information in the input."


def render_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def score_debug(text: str, labels: list[str], instruction: str) -> LabelChoice:  # pragma: no cover - dev aid
    return choose_label(text, labels, parse_rules(instruction))


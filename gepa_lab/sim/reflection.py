"""Answer GEPA's instruction-proposal request: learn cue words from the feedback and write them into
the new instruction as plain-English rules (see ``rules.py`` for the format).

The feedback this learns from (the wording the gepa_lab metrics emit)::

    Correct. The correct answer is "LABEL".
    Incorrect: you answered "PRED". The correct answer is "LABEL".

Natural variants are accepted too: ``expected "X"``, ``should be X``, ``the correct intent is X``.

Feedback on several output fields is read clause by clause (clauses end at a newline or at . ; ! ?
outside quotes): a clause that names an output field of the predictor (``The color is wrong: ...
the correct color is "dark red".``, ``size: expected "XL"``, ``size: correct``) gives that field's
expected value, whatever the field's type; clauses about other fields are left out. A predictor with one
answer field learns rules without a field name; one with several learns rules per field.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from .rules import RuleSet, cue_stems, render_instruction, split_instruction
from .text import content_words, label_stems

_GOLD_PATTERNS = [
    re.compile(r"correct (?:answer|label|intent|output|value|class|category)\s+(?:is|was|would be)\s*:?\s*"
               r"[\"'`\u201c]([^\"'`\u201d]+)[\"'`\u201d]", re.I),
    re.compile(r"correct (?:answer|label|intent|output|value|class|category)\s+(?:is|was|would be)\s*:?\s*"
               r"([\w\-./]+)", re.I),
    re.compile(r"expected\s*:?\s*[\"'`\u201c]([^\"'`\u201d]+)[\"'`\u201d]", re.I),
    re.compile(r"expected\s*:?\s*([\w\-./]+)", re.I),
    re.compile(r"should (?:have been|be)\s*:?\s*[\"'`\u201c]([^\"'`\u201d]+)[\"'`\u201d]", re.I),
    re.compile(r"should (?:have been|be)\s*:?\s*([\w\-./]+)", re.I),
    re.compile(r"(?:gold|target|reference)(?: answer| label)?\s*(?:is|:|=)\s*[\"'`]?([\w\-./]+)", re.I),
]
_PRED_RE = re.compile(r"you (?:answered|predicted|said|chose|output)\s*:?\s*[\"'`\u201c]?([^\"'`\u201d\s.,;]+)", re.I)


@dataclass
class Example:
    text: str  # the input text the task saw
    gold: str | None
    pred: str | None
    correct: bool


@dataclass(frozen=True)
class LearnParams:
    max_cues_per_label: int = 12
    max_labels_per_cue: int = 12  # a cue listed under more labels than this is dropped as generic
    skip_label_words: bool = True  # words of the gold label's own name are already matched by name
    penalize_wrong: bool = True  # a wrong answer weakens the cues that pointed to it
    correct_adds_new: bool = True  # a correctly answered example may add new cues (else it only reinforces)


PARAMS = LearnParams()


def parse_examples(raw: str) -> list[dict[str, Any]]:
    raw = (raw or "").strip()
    for loader in (json.loads, ast.literal_eval):
        try:
            data = loader(raw)
        except Exception:
            continue
        if isinstance(data, dict):
            data = [data]
        if isinstance(data, list):
            return [d for d in data if isinstance(d, dict)]
    return []


def parse_feedback(feedback: str, generated: Any) -> tuple[str | None, str | None, bool]:
    """-> (gold, predicted, correct) from a feedback sentence (and the generated outputs)."""
    fb = feedback or ""
    gold = None
    for pat in _GOLD_PATTERNS:
        m = pat.search(fb)
        if m:
            gold = m.group(1).strip().rstrip(".")
            break
    pred = None
    m = _PRED_RE.search(fb)
    if m:
        pred = m.group(1).strip().rstrip(".")
    elif isinstance(generated, dict) and len(generated) >= 1:
        vals = [v for k, v in generated.items() if k != "reasoning" and isinstance(v, str)]
        if vals:
            pred = vals[-1].strip()
    elif isinstance(generated, str):
        pred = generated.strip()
    correct = bool(re.match(r"\s*(correct|right|yes)\b", fb, re.I)) and not re.match(r"\s*incorrect", fb, re.I)
    if gold is None and correct:
        gold = pred
    if gold is not None and pred is not None and gold == pred:
        correct = True
    return gold, pred, correct


_QUOTED_RE = re.compile(r"\"[^\"]*\"|\u201c[^\u201d]*\u201d")
_CLAUSE_RE = re.compile(r"(?:\"[^\"]*\"|\u201c[^\u201d]*\u201d|[^\"\u201c\n.;!?]|[.;!?](?!\s|$))+")
_SAYS_CORRECT = re.compile(r"\b(?:correct|right)\b", re.I)
_SAYS_WRONG = re.compile(r"\b(?:incorrect|wrong|not)\b", re.I)
# words that name no particular field in "the correct ___ is"
_GENERIC_NOUNS = {"answer", "label", "intent", "output", "value", "class", "category", "result", "response"}
_CORRECT_NOUN_RE = re.compile(r"correct (\w+)\s+(?:is|was|would be)\b", re.I)


def _answer_fields(generated: Any) -> list[str]:
    """The output fields a predictor answers with (every generated field but its reasoning)."""
    return [k for k in generated if k != "reasoning"] if isinstance(generated, dict) else []


def _spellings(field: str) -> set[str]:
    return {field, field.replace("_", " ")}


def _names(clause: str, field: str) -> bool:
    """Whether a clause names the field (outside its quoted values)."""
    bare = _QUOTED_RE.sub(" ", clause)
    return any(re.search(rf"(?<!\w){re.escape(s)}(?!\w)", bare, re.I) for s in _spellings(field))


def _expected(clause: str, field: str) -> str | None:
    """The expected value a clause gives: "the correct FIELD is X", or any of the generic wordings."""
    named = [
        re.compile(rf"correct {re.escape(s)}\s+(?:is|was|would be)\s*:?\s*(?:[\"\u201c]([^\"\u201d]+)[\"\u201d]|([\w\-./]+))", re.I)
        for s in _spellings(field)
    ]
    for pat in named:
        m = pat.search(clause)
        if m:
            return (m.group(1) or m.group(2)).strip().rstrip(".")
    for pat in _GOLD_PATTERNS:
        m = pat.search(clause)
        if m:
            return m.group(1).strip().rstrip(".")
    return None


def read_fields(text: str, feedback: str, generated: Any) -> dict[str, Example] | None:
    """Per output field, what the clauses of the feedback that name it say: the expected value (or, when the
    clause only says it is correct, the value generated). None when no clause names an output field."""
    outputs = _answer_fields(generated)
    found: dict[str, Example] = {}
    named_any = False
    for clause in _CLAUSE_RE.findall(feedback or ""):
        for field in outputs:
            if not _names(clause, field):
                continue
            named_any = True
            if field in found:
                continue
            pred = str(generated[field]).strip()
            gold = _expected(clause, field)
            if gold is None and _SAYS_CORRECT.search(clause) and not _SAYS_WRONG.search(clause):
                gold = pred
            if gold is not None:
                found[field] = Example(text=text, gold=gold, pred=pred, correct=gold == pred)
    return found if named_any else None


def about_another_field(feedback: str, generated: Any) -> bool:
    """"The correct color is ..." shown to a predictor that does not output color: not about its answer."""
    outputs = {s.lower() for f in _answer_fields(generated) for s in _spellings(f)}
    return any(m.group(1).lower() not in _GENERIC_NOUNS | outputs for m in _CORRECT_NOUN_RE.finditer(feedback or ""))


def _inputs_text(inputs: Any) -> tuple[str, str]:
    """-> (text of the inputs, the name of the main input field)."""
    if isinstance(inputs, dict):
        parts = [str(v) for v in inputs.values() if isinstance(v, (str, int, float))]
        name = next(iter(inputs), "input")
        return "\n".join(parts), str(name)
    return str(inputs or ""), "input"


def learn(rules: RuleSet, examples: list[Example], params: LearnParams | None = None) -> RuleSet:
    params = params or PARAMS
    rules = rules.copy()
    ignored = set(rules.ignored)
    for ex in examples:
        if not ex.gold:
            continue
        name_stems = set(label_stems(ex.gold))
        bucket = rules.cues.setdefault(ex.gold, {})
        by_stem = {cue_stems(c): c for c in bucket}
        present = set()
        for s, surface in content_words(ex.text):
            if surface in ignored or s in ignored:
                continue
            present.add((s,))
            if params.skip_label_words and s in name_stems:
                continue
            key = (s,)
            if key in by_stem:
                bucket[by_stem[key]] += 1
            elif ex.correct and not params.correct_adds_new:
                continue
            else:
                bucket[surface] = 1
                by_stem[key] = surface
        if params.penalize_wrong and not ex.correct and ex.pred and ex.pred != ex.gold and ex.pred in rules.cues:
            wrong = rules.cues[ex.pred]
            for cue in list(wrong):
                if cue_stems(cue) and all((s,) in present for s in cue_stems(cue)):
                    wrong[cue] -= 1
                    if wrong[cue] <= 0:
                        del wrong[cue]
    # drop cues that are listed under too many labels
    labels_of: dict[tuple[str, ...], set[str]] = {}
    for label, cues in rules.cues.items():
        for cue in cues:
            labels_of.setdefault(cue_stems(cue), set()).add(label)
    generic = {k for k, labs in labels_of.items() if len(labs) > params.max_labels_per_cue}
    if generic:
        for label, cues in rules.cues.items():
            for cue in list(cues):
                if cue_stems(cue) in generic:
                    if cue not in rules.ignored:
                        rules.ignored.append(cue)
                    del cues[cue]
    # keep the strongest few cues per label (stable order: older cues win ties)
    for label, cues in list(rules.cues.items()):
        ranked = sorted(cues.items(), key=lambda kv: -kv[1])[: params.max_cues_per_label]
        keep = dict(ranked)
        rules.cues[label] = {c: n for c, n in cues.items() if c in keep}
        if not rules.cues[label]:
            del rules.cues[label]
    return rules


def _labelled(examples: list[Example]) -> list[Example]:
    """Examples whose expected value is label-like (short, not a number): values the rules can name."""
    return [ex for ex in examples if ex.gold and _LABEL_RE.match(ex.gold)]


def propose(current_instruction: str, raw_examples: str, params: LearnParams | None = None) -> str:
    task_text, rules = split_instruction(current_instruction or "")
    subject = "query"
    examples: list[Example] = []  # about the predictor's one answer field: rules without a field name
    by_field: dict[str, list[Example]] = {}  # a predictor with several answer fields: rules per field
    for item in parse_examples(raw_examples):
        inputs = item.get("Inputs", item.get("inputs", {}))
        generated = item.get("Generated Outputs", item.get("generated_outputs", {}))
        feedback = str(item.get("Feedback", item.get("feedback", "")))
        text, subject_name = _inputs_text(inputs)
        if subject_name:
            subject = subject_name.replace("_", " ")
        fields = read_fields(text, feedback, generated)
        if fields is None:
            if not about_another_field(feedback, generated):
                gold, pred, correct = parse_feedback(feedback, generated)
                examples.append(Example(text=text, gold=gold, pred=pred, correct=correct))
        elif len(_answer_fields(generated)) == 1:
            examples += fields.values()
        else:
            for field, ex in fields.items():
                by_field.setdefault(field, []).append(ex)
    labelled = _labelled(examples)
    task_text = task_text or (current_instruction or "").strip()
    if examples and not labelled and any(ex.gold for ex in examples):
        # numeric or free-text answers: there is no label to learn cues for; say what the feedback wants
        if NUMERIC_HINT not in task_text and all(_NUMBER_RE.fullmatch(ex.gold or "") for ex in examples if ex.gold):
            task_text = (task_text + "\n\n" + NUMERIC_HINT).strip()
    else:
        rules = learn(rules, labelled, params)
    for field, field_examples in by_field.items():
        learned = learn(rules.fields.get(field, RuleSet()), _labelled(field_examples), params)
        if learned:
            rules.fields[field] = learned
    return render_instruction(task_text, rules, subject=subject)


NUMERIC_HINT = "Give the final answer as a single number, without units."
_LABEL_RE = re.compile(r"^(?!-?\d[\d,]*(?:\.\d+)?$)[\w][\w\-./ ]{0,80}$")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

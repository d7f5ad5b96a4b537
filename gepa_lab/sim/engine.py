"""Turn one chat-completions request body into the reply text (no HTTP here).

Request kinds, recognised from the prompt text alone:

* GEPA reflection through dspy (inputs ``current_instruction`` + ``examples_with_feedback``): reply a
  JSON object ``{"new_instruction": "..."}`` (see ``reflection.py``).
* GEPA's own default reflection template (``gepa.optimize`` without dspy; markdown examples, answer
  inside a ``` block): reply the new instruction inside a ``` block.
* Any other DSPy ChatAdapter / JSONAdapter prompt: a task answer (see ``task_model.py``).
* Anything else: a short plain sentence.

Pure function of the request body, so the same body always gets the same reply.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import reflection, task_model
from .prompts import ParsedPrompt, format_chat_reply, format_json_reply, message_text, parse_request

_GEPA_TEMPLATE_RE = re.compile(
    r"I provided an assistant with the following instructions to perform a task for me:\s*```\n?(?P<instr>.*?)```"
    r".*?feedback on how the assistant's response could be better:\s*```\n?(?P<examples>.*?)```\s*\n\s*Your task is",
    re.DOTALL,
)


def _find_field(names: set[str], *needles: str) -> str | None:
    for name in sorted(names):
        low = name.lower()
        if all(n in low for n in needles):
            return name
    return None


def _is_reflection(p: ParsedPrompt) -> tuple[str, str, str] | None:
    """-> (instruction field, examples field, output field) for a dspy GEPA proposal request."""
    names = p.input_names()
    instr = _find_field(names, "instruction")
    examples = _find_field(names, "feedback") or _find_field(names, "example")
    if not instr or not examples or instr == examples:
        return None
    out = next((f.name for f in p.outputs if "instruction" in f.name.lower()), None)
    if out is None:
        out = p.outputs[0].name if p.outputs else "new_instruction"
    return instr, examples, out


def _markdown_examples(text: str) -> list[dict[str, Any]]:
    """Parse GEPA's markdown rendering of the reflective dataset back into records."""
    records: list[dict[str, Any]] = []
    for chunk in re.split(r"^# Example \d+\s*$", text, flags=re.MULTILINE)[1:]:
        rec: dict[str, Any] = {}
        for sec in re.split(r"^## ", chunk, flags=re.MULTILINE)[1:]:
            title, _, body = sec.partition("\n")
            title = title.strip()
            subs = re.split(r"^###+ (.+)$", body, flags=re.MULTILINE)
            if len(subs) > 1:
                rec[title] = {subs[i].strip(): subs[i + 1].strip() for i in range(1, len(subs) - 1, 2)}
            else:
                rec[title] = body.strip()
        records.append(rec)
    return records


def respond(body: dict[str, Any]) -> str:
    p = parse_request(body)
    refl = _is_reflection(p)
    if refl is not None:
        instr_field, examples_field, out_field = refl
        new = reflection.propose(p.values.get(instr_field, ""), p.values.get(examples_field, ""))
        # always a JSON object: dspy's GEPA proposer takes it up (a [[ ## ]] reply was not, see samples)
        return format_json_reply([(out_field, new)])
    if not p.outputs:
        raw = _raw_text(body)
        m = _GEPA_TEMPLATE_RE.search(raw)
        if m:
            new = reflection.propose(m.group("instr").strip(), json.dumps(_markdown_examples(m.group("examples"))))
            return "```\n" + new + "\n```"
        return "I have no structured task to answer; here is a plain reply."
    values = task_model.answer(p)
    if p.json_mode:
        return format_json_reply(values)
    return format_chat_reply([(name, task_model.render_value(v)) for name, v in values])


def _raw_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    return "\n".join(message_text(m) for m in msgs if isinstance(m, dict))

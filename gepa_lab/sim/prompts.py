"""Parse the chat prompts DSPy adapters send (ChatAdapter and JSONAdapter layouts).

Everything here works on the request text only. A prompt shape that is not recognised yields a
``ParsedPrompt`` with no fields, and the caller answers something harmless instead of failing.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

FIELD_HEADER_RE = re.compile(r"\[\[ ## (\w+) ## \]\]")
OBJECTIVE_RE = re.compile(r"your objective is:[ \t]*\n?", re.IGNORECASE)


@dataclass(frozen=True)  # shared by every request with the same system prompt (parse_system's cache)
class Field:
    name: str
    type: str = "str"
    description: str = ""

    @cached_property
    def literal_values(self) -> tuple[str, ...] | None:
        """The allowed values of a ``Literal[...]`` type, else None."""
        t = self.type.strip()
        if not t.startswith("Literal[") or not t.endswith("]"):
            return None
        inner = t[len("Literal[") : -1]
        try:
            values = ast.literal_eval("[" + inner + "]")
        except (ValueError, SyntaxError):
            values = [v.strip().strip("'\"") for v in inner.split(",")]
        return tuple(str(v) for v in values if str(v) != "")

    @property
    def base_type(self) -> str:
        t = self.type.strip().lower()
        if t.startswith("literal["):
            return "literal"
        if t.startswith("optional[") or t.endswith("| none"):
            t = t.replace("optional[", "").rstrip("]").replace("| none", "").strip()
        for name in ("bool", "int", "float", "str"):
            if t == name:
                return name
        if t.startswith(("list", "tuple", "set")):
            return "list"
        if t.startswith("dict"):
            return "dict"
        return "other"


@dataclass
class ParsedPrompt:
    inputs: list[Field] = field(default_factory=list)
    outputs: list[Field] = field(default_factory=list)
    instruction: str = ""
    values: dict[str, str] = field(default_factory=dict)  # input field values from the last user message
    json_mode: bool = False  # reply as a JSON object (JSONAdapter layout or response_format)

    def output(self, name: str) -> Field | None:
        return next((f for f in self.outputs if f.name == name), None)

    def input_names(self) -> set[str]:
        return {f.name for f in self.inputs} | set(self.values)


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def _balanced_paren(text: str, start: int) -> int:
    """Index of the ')' closing the '(' at ``start`` (brackets and quotes respected), or -1."""
    depth = 0
    quote = ""
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
        elif ch == "\n" and depth <= 1:
            # a type annotation never spans lines; give up on this field
            return -1
        i += 1
    return -1


def _parse_field_list(block: str) -> list[Field]:
    fields: list[Field] = []
    for m in re.finditer(r"^\s*\d+\.\s*`([^`]+)`\s*", block, re.MULTILINE):
        name = m.group(1).strip()
        pos = m.end()
        ftype = "str"
        desc = ""
        if pos < len(block) and block[pos] == "(":
            close = _balanced_paren(block, pos)
            if close > 0:
                ftype = block[pos + 1 : close]
                rest = block[close + 1 :].split("\n", 1)[0]
                desc = rest.lstrip(":").strip()
        fields.append(Field(name=name, type=ftype.strip(), description=desc))
    return fields


def _section(text: str, start_marker: str, end_markers: tuple[str, ...]) -> str:
    i = text.find(start_marker)
    if i < 0:
        return ""
    j = len(text)
    for marker in end_markers:
        k = text.find(marker, i + len(start_marker))
        if k >= 0:
            j = min(j, k)
    return text[i + len(start_marker) : j]


@lru_cache(maxsize=1024)
def parse_system(system: str) -> tuple[tuple[Field, ...], tuple[Field, ...], str]:
    """(input fields, output fields, instruction) of an adapter's system prompt. Cached: every example a program
    candidate is evaluated on repeats its system prompt, and parsing it was half of the simulator's CPU time."""
    inputs = _parse_field_list(
        _section(system, "Your input fields are:", ("Your output fields are:", "All interactions will"))
    )
    outputs = _parse_field_list(_section(system, "Your output fields are:", ("All interactions will",)))
    instruction = ""
    m = None
    for m in OBJECTIVE_RE.finditer(system):
        pass
    if m is not None:
        instruction = textwrap.dedent(system[m.end() :]).strip()
    return tuple(inputs), tuple(outputs), instruction


def parse_sections(text: str) -> dict[str, str]:
    """``[[ ## name ## ]]`` sections of a message -> {name: value}."""
    values: dict[str, str] = {}
    matches = list(FIELD_HEADER_RE.finditer(text))
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        values[m.group(1)] = text[m.end() : end].strip("\n")
    return values


_TRAILER_RE = re.compile(r"\n\s*Respond with (the corresponding output fields|a JSON object).*\Z", re.DOTALL)


def parse_request(body: dict[str, Any]) -> ParsedPrompt:
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        messages = []
    system = "\n".join(message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "system")
    users = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    last_user = users[-1] if users else ""
    if not system and not last_user and isinstance(body.get("prompt"), str):
        last_user = body["prompt"]
    inputs, outputs, instruction = parse_system(system)
    values = parse_sections(last_user)
    # drop the adapter's trailing "Respond with ..." sentence from the last field
    if values:
        last = list(values)[-1]
        values[last] = _TRAILER_RE.sub("", values[last]).strip()
    input_names = {f.name for f in inputs}
    if input_names:
        values = {k: v for k, v in values.items() if k in input_names}
    response_format = body.get("response_format")
    json_mode = "Outputs will be a JSON object" in system or (
        isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
    )
    if not system and not values:
        instruction = last_user
    return ParsedPrompt(inputs=list(inputs), outputs=list(outputs), instruction=instruction, values=values, json_mode=json_mode)


def format_chat_reply(outputs: list[tuple[str, str]]) -> str:
    parts = [f"[[ ## {name} ## ]]\n{value}\n" for name, value in outputs]
    parts.append("[[ ## completed ## ]]")
    return "\n".join(parts)


def format_json_reply(outputs: list[tuple[str, Any]]) -> str:
    return json.dumps({name: value for name, value in outputs}, ensure_ascii=False)

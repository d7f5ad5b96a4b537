"""The simulator learns `str` output fields from GEPA's reflection requests, over real HTTP: the expected value the
feedback names for a field, with the inputs it went with, becomes a rule, and the task model answers with it.
Requests are laid out by dspy's own adapters and GEPA's recorded reflection prompt."""
from __future__ import annotations

import json
from pathlib import Path

import dspy
import httpx
import pytest
from dspy.adapters import ChatAdapter, JSONAdapter

REFLECTION_SAMPLE = Path(__file__).parent / "dspy_requests" / "gepa_reflection.json"


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c


def reply(client: httpx.Client, sim, messages: list[dict]) -> str:
    r = client.post(sim.url + "/chat/completions", json={"model": "sim", "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def reflect(client, sim, instruction: str, examples: list[dict]) -> str:
    """GEPA's proposal request, as dspy 3.4.1 sends it, with these examples; returns the new instruction."""
    system = json.loads(REFLECTION_SAMPLE.read_text())["request_body"]["messages"][0]
    user = (f"[[ ## current_instruction ## ]]\n{instruction}\n\n[[ ## examples_with_feedback ## ]]\n{json.dumps(examples)}\n\n"
            "Respond with a JSON object in the following order of fields: `new_instruction`.")
    return json.loads(reply(client, sim, [system, {"role": "user", "content": user}]))["new_instruction"]


def answer(client, sim, signature: str, instruction: str, adapter=None, **inputs) -> dict:
    """The task model's output fields for a dspy signature, parsed back by the same adapter."""
    adapter = adapter or ChatAdapter()
    sig = dspy.make_signature(signature, instruction)
    return adapter.parse(sig, reply(client, sim, adapter.format(sig, [], inputs)))


ROUTE = "Name the team that handles the support message."
TICKETS = [  # (message, team, urgency)
    ("the invoice charged me twice asap", "billing desk", "same day"),
    ("a refund for my receipt whenever", "billing desk", "next week"),
    ("the courier lost my parcel tonight", "delivery", "same day"),
    ("tracking shows the parcel shipped someday", "delivery", "next week"),
]


def test_one_str_field_learns_values_from_feedback_in_the_users_words(client, sim):
    examples = [{"Inputs": {"message": msg}, "Generated Outputs": {"team": "somebody"},
                 "Feedback": f'team: expected "{team}", got "somebody".\nurgency: expected "{urgency}", got "".'}
                for msg, team, urgency in TICKETS]
    learned = reflect(client, sim, ROUTE, examples)
    assert learned.startswith(ROUTE)
    assert '"invoice"' in learned and 'answer "billing desk".' in learned and "answer delivery." in learned
    assert "same day" not in learned  # the urgency clauses are about a field this predictor does not output
    assert answer(client, sim, "message -> team", learned, message="where is my parcel")["team"] == "delivery"
    assert answer(client, sim, "message -> team", learned, JSONAdapter(), message="my invoice")["team"] == "billing desk"
    # before learning: a sentence, never one of the values
    assert answer(client, sim, "message -> team", ROUTE, message="where is my parcel")["team"] not in ("delivery", "billing desk")


def test_a_second_predictor_learns_from_its_own_field_and_reads_the_first_ones_output(client, sim):
    examples = [{"Inputs": {"message": msg, "team": team}, "Generated Outputs": {"urgency": "soon"},
                 "Feedback": f'The correct team is "{team}". The urgency is wrong: you answered "soon"; the correct urgency is "{urgency}".'}
                for msg, team, urgency in TICKETS]
    learned = reflect(client, sim, "Say how soon the team must answer.", examples)
    assert 'answer "same day".' in learned and 'answer "next week".' in learned
    assert "billing desk\"." not in learned and "answer delivery" not in learned
    out = answer(client, sim, "message, team -> reasoning, urgency", learned, message="please fix it tonight", team="delivery")
    assert out["urgency"] == "same day" and out["reasoning"] not in ("same day", "next week")


def test_several_str_fields_of_one_predictor_get_rules_per_field(client, sim):
    examples = [{"Inputs": {"message": msg}, "Generated Outputs": {"team": "x", "urgency": urgency if i % 2 else "y"},
                 "Feedback": f'team: expected "{team}"\nurgency: ' + (f"correct ({urgency})." if i % 2 else f'expected "{urgency}"')}
                for i, (msg, team, urgency) in enumerate(TICKETS)]
    learned = reflect(client, sim, "Route and rate the message.", examples)
    assert 'set team to "billing desk".' in learned and 'set urgency to "same day".' in learned
    next_week = next(line for line in learned.splitlines() if line.endswith('set urgency to "next week".'))
    assert '"whenever"' in next_week  # "urgency: correct": the value it gave, with that message's words
    out = answer(client, sim, "message -> team, urgency", learned, message="my refund, whenever you can")
    assert out == {"team": "billing desk", "urgency": "next week"}


def test_literal_outputs_and_unlearned_str_fields_answer_as_before(client, sim):
    learned = reflect(client, sim, ROUTE, [{"Inputs": {"message": "my parcel is lost"}, "Generated Outputs": {"team": "billing"},
                                            "Feedback": 'Incorrect: you answered "billing". The correct answer is "delivery".'}])
    assert learned.endswith('- If the message mentions "parcel" or "lost", answer delivery.')
    sig = "message -> team: Literal['billing', 'delivery'], note"
    out = answer(client, sim, sig, learned, message="parcel lost again")
    assert out["team"] == "delivery" and out["note"].startswith("The input mentions")  # no rule names note

"""HTTP contract of the LM simulator: real server process, real HTTP, real dspy."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402

from gepa_lab.sim.text import count_tokens, prompt_token_count  # noqa: E402

SAMPLES = Path(__file__).resolve().parent / "dspy_requests"  # real requests dspy 3.4.1 sent (README there)

PREDICT_SYSTEM = (
    "Your input fields are:\n1. `query` (str):\nYour output fields are:\n1. `intent` (Literal['card_arrival', "
    "'card_not_working', 'cancel_transfer', 'card_acceptance']):\nAll interactions will be structured in the "
    "following way, with the appropriate values filled in.\n\n[[ ## query ## ]]\n{query}\n\n[[ ## intent ## ]]\n"
    "{intent}        # note: the value you produce must exactly match (no extra characters) one of: card_arrival; "
    "card_not_working; cancel_transfer; card_acceptance\n\n[[ ## completed ## ]]\nIn adhering to this structure, "
    "your objective is: \n        Classify the intent of an online-banking customer query."
)


def predict_body(query: str, system: str = PREDICT_SYSTEM) -> dict:
    user = (
        f"[[ ## query ## ]]\n{query}\n\nRespond with the corresponding output fields, starting with the field "
        "`[[ ## intent ## ]]` (must be formatted as a valid Python Literal['card_arrival', 'card_not_working', "
        "'cancel_transfer', 'card_acceptance']), and then ending with the marker for `[[ ## completed ## ]]`."
    )
    return {"model": "sim", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


@pytest.fixture
def client(sim):
    with httpx.Client(base_url=sim.base, timeout=10) as c:
        yield c


def content_of(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["sim"]


def test_chat_completion_schema_and_usage(client):
    body = predict_body("My card still hasn't arrived")
    resp = client.post("/v1/chat/completions", json=body)
    data = resp.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["finish_reason"] == "stop"
    content = data["choices"][0]["message"]["content"]
    assert content == "[[ ## intent ## ]]\ncard_arrival\n\n[[ ## completed ## ]]"
    usage = data["usage"]
    prompt_text = "\n".join(m["content"] for m in body["messages"])
    assert usage["prompt_tokens"] == count_tokens(prompt_text)
    assert usage["completion_tokens"] == count_tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_token_count_rule():
    # word pieces plus each punctuation character
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("[[ ## intent ## ]]") == 9
    assert count_tokens("") == 0


@given(st.lists(st.text(alphabet="ab ,.\n\t_é!", max_size=12), max_size=4))
def test_prompt_tokens_counted_per_message_equal_the_joined_prompt(contents):
    messages = [{"role": "user", "content": c} for c in contents]
    assert prompt_token_count(messages) == prompt_token_count(messages) == count_tokens("\n".join(contents))


def test_same_body_same_reply(client):
    body = predict_body("Can I cancel the transfer I made?")
    replies = {content_of(client.post("/v1/chat/completions", json=body)) for _ in range(3)}
    assert len(replies) == 1
    other = content_of(client.post("/v1/chat/completions", json=predict_body("My card is not working")))
    assert other != replies.pop()


def test_dspy_predict_literal_against_server(sim):
    class Intent(dspy.Signature):
        """Classify the intent of an online-banking customer query."""

        query: str = dspy.InputField()
        intent: Literal["card_arrival", "card_not_working", "cancel_transfer", "card_acceptance"] = dspy.OutputField()

    lm = dspy.LM("openai/sim", api_base=sim.url, api_key="x", cache=False, num_retries=0)
    with dspy.context(lm=lm):
        pred = dspy.Predict(Intent)(query="Please cancel my transfer")
        assert pred.intent == "cancel_transfer"
        # an instruction with a learned rule changes the answer
        ruled = Intent.with_instructions(
            "Classify the intent of an online-banking customer query.\n\n"
            '- If the query mentions "broken", answer card_not_working.'
        )
        assert dspy.Predict(Intent)(query="it is broken").intent == "card_arrival"  # no evidence: first label
        assert dspy.Predict(ruled)(query="it is broken").intent == "card_not_working"


def test_dspy_chain_of_thought_and_json_adapter(sim):
    lm = dspy.LM("openai/sim", api_base=sim.url, api_key="x", cache=False, num_retries=0)
    with dspy.context(lm=lm):
        pred = dspy.ChainOfThought("question -> answer: float")(question="Tom has 3 apples and buys 4 more. How many?")
        assert isinstance(pred.answer, float) and pred.answer == 4.0  # last number; it does no arithmetic
        assert isinstance(pred.reasoning, str) and pred.reasoning
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.Predict("question -> answer: int, confident: bool")(question="Pick 7 or 9")
        assert pred.answer == 9 and isinstance(pred.confident, bool)


def test_captured_dspy_samples_get_parseable_replies(client):
    files = sorted(SAMPLES.glob("*.json"))
    assert len(files) == 3, SAMPLES
    adapter = dspy.ChatAdapter()
    for f in files:
        sample = json.loads(f.read_text())
        body = sample["request_body"]
        content = content_of(client.post("/v1/chat/completions", json=body))
        if "reflection" in f.name:
            reply = json.loads(content)
            assert set(reply) == {"new_instruction"}
            assert reply["new_instruction"].startswith("Classify the intent")
        else:
            expected = sample["a_reply_content_that_dspy_parses"]
            fields = [f for f in re.findall(r"\[\[ ## (\w+) ## \]\]", expected) if f != "completed"]
            for name in fields:
                assert f"[[ ## {name} ## ]]" in content
            assert content.rstrip().endswith("[[ ## completed ## ]]")
            sig_fields = {name: (str, dspy.OutputField()) for name in fields}
            parsed = adapter.parse(dspy.Signature(sig_fields, "x"), content)
            assert set(parsed) == set(fields)


def test_odd_requests_never_crash(client):
    odd = [
        {"model": "sim", "messages": [{"role": "user", "content": "hello there"}]},
        {"model": "sim", "messages": []},
        {"model": "sim", "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]},
        {"model": "sim", "messages": [{"role": "system", "content": "Your output fields are:\n1. `x` (dict[str, int]):"}]},
    ]
    for body in odd:
        assert isinstance(content_of(client.post("/v1/chat/completions", json=body)), str)
    assert client.post("/v1/chat/completions", content=b"not json").status_code == 400


def test_stream_and_n(client):
    body = predict_body("my card is not working") | {"n": 2}
    data = client.post("/v1/chat/completions", json=body).json()
    assert len(data["choices"]) == 2
    body = predict_body("my card is not working") | {"stream": True}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    events = [ln[6:] for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "card_not_working" in json.loads(events[0])["choices"][0]["delta"]["content"]


def test_stats_count_and_reset(sim, client):
    assert client.post("/stats/reset").status_code == 200
    s0 = client.get("/stats").json()
    assert s0["requests_received"] == 0 and s0["requests_served"] == 0
    for q in ("a card question", "a transfer question"):
        client.post("/v1/chat/completions", json=predict_body(q))
    s1 = sim.stats()
    assert s1["requests_received"] == 2 and s1["requests_served"] == 2
    assert s1["errors"] == {"500": 0, "429": 0, "hang": 0, "401": 0, "400": 0}
    assert s1["prompt_tokens"] > 0 and s1["completion_tokens"] > 0
    for key in ("peak_in_flight", "mean_in_flight", "busy_seconds", "uptime", "in_flight"):
        assert key in s1
    assert s1["peak_in_flight"] == 1 and s1["in_flight"] == 0
    assert s1["config"]["api_key"] is None

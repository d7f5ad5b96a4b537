"""The simulator as a task LM that reads rules and as a reflection LM that writes them, over real HTTP.
(GEPA improving programs through it, on banking77 and on a generated corpus: tests/test_run.py.)"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from gepa_lab.sim.reflection import parse_feedback  # noqa: E402

SEED = "Classify the intent of an online-banking customer query."
LABELS = ["card_arrival", "card_not_working", "cancel_transfer", "pin_blocked"]
RULE_RE = re.compile(r'^\s*- If the query mentions (.+), answer (\w+)\.$', re.MULTILINE)


def task_body(instruction: str, query: str, labels=LABELS) -> dict:
    lit = ", ".join(repr(lab) for lab in labels)
    indented = "\n".join("        " + line for line in instruction.splitlines())
    system = (
        f"Your input fields are:\n1. `query` (str):\nYour output fields are:\n1. `intent` (Literal[{lit}]):\n"
        "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
        "[[ ## query ## ]]\n{query}\n\n[[ ## intent ## ]]\n{intent}\n\n[[ ## completed ## ]]\n"
        f"In adhering to this structure, your objective is: \n{indented}"
    )
    user = f"[[ ## query ## ]]\n{query}\n\nRespond with the corresponding output fields, starting with the field `[[ ## intent ## ]]`."
    return {"model": "sim", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def reflection_body(current: str, examples: list[dict]) -> dict:
    sample = Path(__file__).resolve().parents[3] / "shared" / "samples" / "gepa_reflection.json"
    if sample.exists():
        system = json.loads(sample.read_text())["request_body"]["messages"][0]["content"]
    else:  # the same layout dspy 3.4.1 sends (see tests/sim/dspy_requests/gepa_reflection.json)
        system = (
            "Your input fields are:\n1. `current_instruction` (str): The instructions I provided to the assistant.\n"
            "2. `examples_with_feedback` (list[dict[str, Any]]): Task inputs, responses and feedback.\n"
            "Your output fields are:\n1. `new_instruction` (str): The new instruction for the assistant.\n"
            "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
            "Outputs will be a JSON object with the following fields.\n\nIn adhering to this structure, your "
            "objective is: \n        Write a new instruction for the assistant."
        )
    user = (
        f"[[ ## current_instruction ## ]]\n{current}\n\n[[ ## examples_with_feedback ## ]]\n{json.dumps(examples)}\n\n"
        "Respond with a JSON object in the following order of fields: `new_instruction`."
    )
    return {"model": "sim", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def example(query: str, pred: str, gold: str) -> dict:
    fb = (
        f'Correct. The correct answer is "{gold}".'
        if pred == gold
        else f'Incorrect: you answered "{pred}". The correct answer is "{gold}".'
    )
    return {"Inputs": {"query": query}, "Generated Outputs": {"intent": pred}, "Feedback": fb}


def ask(client: httpx.Client, sim, body: dict) -> str:
    r = client.post(sim.url + "/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def answer(client, sim, instruction, query, labels=LABELS) -> str:
    content = ask(client, sim, task_body(instruction, query, labels))
    m = re.search(r"\[\[ ## intent ## \]\]\n(.*)\n", content)
    assert m, content
    return m.group(1).strip()


def test_task_model_reads_indented_rules(sim):
    ruled = SEED + '\n\nCues learned from feedback:\n  - If the query mentions "stuck" or "frozen", answer pin_blocked.'
    with httpx.Client(timeout=10) as client:
        assert answer(client, sim, SEED, "my account is frozen") == "card_arrival"  # no evidence at all
        assert answer(client, sim, ruled, "my account is frozen") == "pin_blocked"
        assert answer(client, sim, ruled, "my account is FROZEN!") == "pin_blocked"
        # label-name words still count without rules
        assert answer(client, sim, SEED, "please cancel this transfer") == "cancel_transfer"


def test_reflection_reply_is_json_with_learned_rules_and_merges_the_parent(sim):
    batch1 = [
        example("My parcel with the card never arrived in the post", "card_arrival", "card_arrival"),
        example("The card got stuck and the machine kept it", "card_arrival", "card_not_working"),
        example("I typed the code wrong three times, now it is locked", "card_arrival", "pin_blocked"),
    ]
    with httpx.Client(timeout=10) as client:
        reply = json.loads(ask(client, sim, reflection_body(SEED, batch1)))
        assert list(reply) == ["new_instruction"]
        first = reply["new_instruction"]
        assert first.startswith(SEED)  # the task sentence is kept
        rules = dict((label, cues) for cues, label in RULE_RE.findall(first))
        assert "pin_blocked" in rules and '"locked"' in rules["pin_blocked"]
        assert "card_not_working" in rules and '"stuck"' in rules["card_not_working"]
        # the task model follows what the reflection model wrote
        assert answer(client, sim, first, "why is my account locked") == "pin_blocked"
        assert answer(client, sim, SEED, "why is my account locked") != "pin_blocked"

        batch2 = [example("Please stop the payment I just sent", "card_arrival", "cancel_transfer")]
        second = json.loads(ask(client, sim, reflection_body(first, batch2)))["new_instruction"]
        labels2 = {label for _, label in RULE_RE.findall(second)}
        assert {"pin_blocked", "card_not_working", "cancel_transfer"} <= labels2  # parent's rules kept
        assert second.count(SEED) == 1
        # deterministic
        again = json.loads(ask(client, sim, reflection_body(first, batch2)))["new_instruction"]
        assert again == second


def test_feedback_wording_and_variants():
    assert parse_feedback('Correct. The correct answer is "a_b".', {"intent": "a_b"}) == ("a_b", "a_b", True)
    assert parse_feedback('Incorrect: you answered "x_y". The correct answer is "a_b".', {}) == ("a_b", "x_y", False)
    assert parse_feedback("Wrong, expected \"a_b\".", {"intent": "x_y"}) == ("a_b", "x_y", False)
    assert parse_feedback("The answer should be a_b.", {"intent": "x_y"}) == ("a_b", "x_y", False)
    assert parse_feedback("The correct intent is a_b; you answered x_y.", {}) == ("a_b", "x_y", False)


def test_no_task_knowledge_built_in():
    pkg = Path(__file__).resolve().parents[2] / "gepa_lab" / "sim"
    paths = list(pkg.glob("*.py"))
    assert len(paths) >= 8, paths
    for path in paths:
        text = path.read_text().lower()
        # the tasks the tests optimize: banking77, and tests/support/two_step.py's teams and urgencies
        for word in ("banking", "card_arrival", "top_up", "datasets", "train.csv", "categories.json",
                     "billing", "repairs", "urgency", "same day", "next week", "two_step"):
            assert word not in text, f"{path.name} mentions {word!r}"
        assert "open(" not in text, f"{path.name} opens files"


def test_numeric_feedback_and_gepa_default_template(sim):
    math_ex = [{"Inputs": {"question": "Tom has 3 apples and buys 5 more."}, "Generated Outputs": {"answer": "5.0"},
                "Feedback": 'Incorrect: you answered "5". The correct answer is "8".'}]
    with httpx.Client(timeout=10) as client:
        new = json.loads(ask(client, sim, reflection_body("Solve the problem.", math_ex)))["new_instruction"]
        assert new.startswith("Solve the problem.") and "single number" in new and not RULE_RE.search(new)
        # gepa.optimize's own proposal template (no dspy): the reply is a ``` block
        from gepa.strategies.instruction_proposal import InstructionProposalSignature

        prompt = InstructionProposalSignature.prompt_renderer({
            "current_instruction_doc": SEED,
            "dataset_with_feedback": [example("The code is locked after three tries", "card_arrival", "pin_blocked")],
        })
        content = ask(client, sim, {"model": "sim", "messages": [{"role": "user", "content": prompt}]})
        new = InstructionProposalSignature.output_extractor(content)["new_instruction"]
        assert new.startswith(SEED) and '"locked"' in new and "pin_blocked" in new

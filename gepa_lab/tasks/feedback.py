"""The wording of metric feedback. The LM simulator's reflection model learns from exactly this
(docs/simulator.md, "Feedback the simulator learns from"); a real reflection LM reads it as plain English."""


def correct(answer: str) -> str:
    return f'Correct. The correct answer is "{answer}".'


def incorrect(predicted: str, answer: str) -> str:
    return f'Incorrect: you answered "{predicted}". The correct answer is "{answer}".'


def on_field(field: str, predicted: str, answer: str) -> str:
    """Feedback on one of several output fields: it names the field, so a reader knows which one it is about."""
    if predicted == answer:
        return f'The {field} is correct: "{answer}".'
    return f'The {field} is wrong: you answered "{predicted}"; the correct {field} is "{answer}".'

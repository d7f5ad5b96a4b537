"""The wording of metric feedback. The LM simulator's reflection model learns from exactly this
(README, "Feedback the simulator learns from"); a real reflection LM reads it as plain English."""


def correct(answer: str) -> str:
    return f'Correct. The correct answer is "{answer}".'


def incorrect(predicted: str, answer: str) -> str:
    return f'Incorrect: you answered "{predicted}". The correct answer is "{answer}".'

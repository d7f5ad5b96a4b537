"""Client threads that keep an LM busy while a test breaks something under them (a router, a replica)."""
from __future__ import annotations

import threading

import dspy


class Callers:
    """`n` threads, each making `calls` calls of `lm` (counted by `meter`, a UsageMeter), started at once; join()
    waits for them and returns the error of every call that failed."""

    def __init__(self, lm: dspy.LM, meter, n: int, calls: int):
        self.errors: list[str] = []

        def run(i: int) -> None:
            with dspy.context(callbacks=[meter]):
                for j in range(calls):
                    try:
                        lm(f"caller {i} call {j}")
                    except Exception as e:  # noqa: BLE001 - what the test asserts on
                        self.errors.append(str(e))

        self.threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def join(self) -> list[str]:
        for t in self.threads:
            t.join()
        return self.errors

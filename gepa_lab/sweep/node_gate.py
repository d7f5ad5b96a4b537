"""The sweep stops when a trial's node refuses it (gepa_lab.servers.ray_cluster.NodeChecks: a node that joined
after the sweep's checks and does not share output_dir, or does not reach an LM endpoint). Without this, Tune would
mark the trial failed and go on giving that node trials, each failing at once, with no row in the results (the node
cannot write where the driver reads)."""
from __future__ import annotations

import contextlib
import pickle
from typing import Iterator

from ray.tune import Callback
from ray.tune.error import TuneError

from gepa_lab.servers.ray_cluster import NodeRefused


class StopOnRefusedNode(Callback):
    """Raises a trial's NodeRefused in the driver, out of Tune's fit(), as Ctrl-C does: Tune keeps the unfinished
    trials unfinished, so a rerun with the same output_dir, once the node is fixed or gone, resumes them. At the
    trial's first failure: Tune would retry it (sweep.max_failures), maybe on the same node."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_refused(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_refused(trial)

    @staticmethod
    def _stop_if_refused(trial) -> None:
        if not trial.pickled_error_file:
            return
        with open(trial.pickled_error_file, "rb") as f:  # the driver's copy; Tune wrote it just before this call
            error = pickle.load(f)  # a RayTaskError that is also an instance of its cause's class
        if isinstance(error, NodeRefused):
            raise NodeRefused(str(getattr(error, "cause", error)))


@contextlib.contextmanager
def refusal_as_one_line() -> Iterator[None]:
    """Around Tune's fit(): the NodeRefused StopOnRefusedNode raised, out of the TuneError Tune wraps it in."""
    try:
        yield
    except TuneError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, NodeRefused):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise NodeRefused(str(cause)) from None

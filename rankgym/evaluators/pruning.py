"""Multi-fidelity for the finetune evaluator: Optuna's pruners stop a map's training part-way.

Every evaluation is one trial of an in-memory Optuna study the evaluator keeps for itself, so any
agent (TPE, random search, PPO) gets it: after each of ``rungs`` equal parts of the training but the
last, the map is scored on the first ``report_examples`` of the score split (held out of training,
like every search score) and that score is reported; where the pruner prunes the trial, training
stops there. The evaluation is then a partial one (:attr:`~rankgym.core.Evaluation.stopped`): its
metric is the score when pruned and its ``fraction`` the share of the training done, stored apart
from full scores as the elastic evaluator's stopped scores are. A trial that is not pruned trains
exactly as without a pruner (the reports only read the model), so its score is the full score.
The pruners are Optuna's, with their defaults: successive halving (``sha``), Hyperband, median.
"""

from __future__ import annotations

from typing import Callable

from rankgym.errors import ConfigError
from rankgym.taskdata import Encoded
from rankgym.training import evaluate

PRUNERS = ("sha", "hyperband", "median")


class Pruned(Exception):
    """Raised inside training where the pruner stops a trial: the score reported last, and the share trained."""

    def __init__(self, value: float, fraction: float) -> None:
        super().__init__(f"pruned at {fraction:.0%} of training, score {value:.4f}")
        self.value, self.fraction = value, fraction


class Pruning:
    """The study of one evaluator's trials.

    Args:
        pruner: ``sha`` (successive halving), ``hyperband`` or ``median``.
        rungs: equal parts of training after each of which (but the last) a trial reports.
        report_set: what a report is scored on (a part of the score split).
        pad_id / batch_size: as :func:`rankgym.training.evaluate` takes them.
    """

    def __init__(self, pruner: str, rungs: int, report_set: Encoded, pad_id: int, batch_size: int | None) -> None:
        try:
            import optuna
        except ImportError:
            raise ConfigError("pruner needs Optuna: pip install 'rankgym[tpe]'") from None
        if pruner not in PRUNERS:
            raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
        if rungs < 2:
            raise ConfigError(f"pruning needs rungs >= 2 parts of training to report after, got {rungs}")
        made = {"sha": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
                "median": optuna.pruners.MedianPruner}[pruner]()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.study = optuna, optuna.create_study(direction="maximize", pruner=made)
        self.rungs, self.report_set, self.pad_id, self.batch_size = rungs, report_set, pad_id, batch_size

    def trial(self, model, steps: int) -> tuple[object, Callable[[int], None]]:
        """A new trial and the ``after_step`` hook that reports to it (raising :class:`Pruned` to stop) over ``steps`` steps."""
        trial = self.study.ask()
        every = max(1, steps // self.rungs)

        def after_step(step: int) -> None:
            done = step + 1
            if done % every or done >= steps:
                return
            value = evaluate(model, self.report_set, self.pad_id, self.batch_size)[0]
            trial.report(value, done)
            if trial.should_prune():
                raise Pruned(value, done / steps)

        return trial, after_step

    def pruned(self, trial) -> None:
        self.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)

    def completed(self, trial, metric: float) -> None:
        if metric == metric:  # a NaN metric (a failed map) tells the study nothing
            self.study.tell(trial, metric)
        else:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)

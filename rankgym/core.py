"""rankgym's core types, below every other module: what one evaluation measured, what a module is,
the adapter parameter count, and which failures belong to a map. numpy only, no torch."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rankgym.errors import MapFailure

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What one evaluation of a rank map measured.

    Attributes:
        metric: the task's metric (accuracy for SST-2) on the evaluator's split; NaN when it failed.
        params: trainable adapter parameters of the map, sum of r · (in + out).
        seconds: wall-clock seconds the evaluation took (0 for a cache hit's own lookup).
        val_loss / train_loss: mean losses, where the evaluator measures them.
        device: where it ran.
        cache_hit: answered from the store without training.
        error: why it failed (None when it did not).
        fraction: the share of the evaluator's work done; below 1 it stopped early (the elastic
            evaluator's ``early_stop``: a share of the split read, once the map could not reach a
            reference map; the finetune evaluator's ``pruner``: a share of the training), and
            ``metric`` is an estimate from that part, not a full score.
    """

    metric: float
    params: int
    seconds: float
    val_loss: float = math.nan
    train_loss: float = math.nan
    device: str = "cpu"
    cache_hit: bool = False
    error: str | None = None
    fraction: float = 1.0

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.metric)

    @property
    def stopped(self) -> bool:
        """Stopped part-way: ``metric`` is an estimate, never a score to compare as one."""
        return self.fraction < 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_map_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failure of the map itself, the only kind stored and replayed as its result.

    The whitelist: a :class:`~rankgym.errors.MapFailure` (a diverged fine-tune, a NaN or infinite
    loss; a map a replayed table never recorded) and running out of memory (GPU or CPU). Anything
    else (a programming error, a misconfiguration, a missing file) says nothing about the map: it
    stops the run with its message, and nothing is stored.
    """
    if isinstance(err, (MapFailure, MemoryError)):
        return True
    message = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


@dataclass(frozen=True)
class ModuleInfo:
    """Static facts about one adaptable module, the raw material of observations and strategies.

    Attributes:
        name: full module name.
        kind: one of :data:`rankgym.backbones.KINDS`.
        layer: transformer block index.
        in_features / out_features: shape of the map x -> W x.
        spectrum: singular values of the frozen weight, largest first.
    """

    name: str
    kind: str
    layer: int
    in_features: int
    out_features: int
    spectrum: tuple[float, ...] = field(repr=False, default=())

    def energy_rank(self, fraction: float) -> int:
        """Smallest r whose top singular values reach ``fraction`` of their sum (the article's rule)."""
        s = np.asarray(self.spectrum, dtype=np.float64)
        if s.size == 0:
            return 0
        return int(np.searchsorted(np.cumsum(s) / s.sum(), fraction) + 1)


def adapter_params(modules: Sequence[ModuleInfo], ranks: Mapping[str, int] | Sequence[int]) -> int:
    """Trainable adapter parameters of ``ranks`` (by module name, or in module order): sum of r · (in + out)."""
    if isinstance(ranks, Mapping):
        ranks = [ranks.get(m.name, 0) for m in modules]
    return sum(int(r) * (m.in_features + m.out_features) for r, m in zip(ranks, modules))


def failed_evaluation(err: BaseException, params: int, seconds: float) -> Evaluation:
    """The evaluation of a map whose evaluation raised a failure of its own (:func:`is_map_failure`):
    NaN metric and the error's message. Built here only, for every caller."""
    log.warning("evaluation failed: %s", err, exc_info=None if isinstance(err, (ArithmeticError, MemoryError, MapFailure)) else err)
    return Evaluation(math.nan, params, seconds, error=f"{type(err).__name__}: {err}")


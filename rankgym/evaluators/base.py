"""The one interface behind every environment step: rank map in, :class:`Evaluation` out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rankgym.errors import MapFailure
from rankgym.rankmap import RankMap
from rankgym.recipe import ALPHA_POLICY


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
    """

    metric: float
    params: int
    seconds: float
    val_loss: float = math.nan
    train_loss: float = math.nan
    device: str = "cpu"
    cache_hit: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.metric)

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


class Evaluator(ABC):
    """Turns a rank map into an :class:`Evaluation`.

    Subclasses set ``name`` and ``version`` (bump the version whenever results for the same key
    change, so stored evaluations are not reused across it) and describe their budget.
    """

    name: str = "evaluator"
    version: int = 1
    cacheable: bool = True  # False when a result depends on more than the map (warm start's history)
    parallel: int = 1  # maps an agent should propose at once (a Ray pool's workers evaluate them side by side)
    alpha_policy: dict[str, Any] = ALPHA_POLICY
    split: str = "score"  # where metrics come from: "score" (held out of training), "validation" or "closed form"

    @property
    @abstractmethod
    def modules(self) -> list[ModuleInfo]:
        """Adaptable modules, in model order."""

    @abstractmethod
    def evaluate(self, rank_map: RankMap) -> Evaluation:
        """Measure ``rank_map``; raise on failure (the environment turns errors into penalties)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything besides the map that decides the result: backbone, revision, task, budget, seed."""

    def template(self) -> RankMap:
        """A rank map over this evaluator's modules (rank 0), carrying its alpha policy and provenance."""
        ident = self.identity()
        provenance = {"backbone": ident.get("backbone"), "task": ident.get("task")}
        return RankMap({m.name: 0 for m in self.modules}, provenance=provenance, **self.alpha_policy)

    def trainable_params(self, rank_map: RankMap) -> int:
        return adapter_params(self.modules, rank_map.ranks)

    def state_key(self) -> str:
        """What besides the map decided the last result (stored with it); empty for stateless evaluators."""
        return ""

    def reset_episode(self) -> None:
        """Called by the environment at ``reset()``; stateful evaluators (warm start) start over."""

    def close(self) -> None:
        """Free what the evaluator holds (models, GPU memory)."""

"""The ``replay`` evaluator: a tabular benchmark that answers only from a store of recorded evaluations."""

from __future__ import annotations

from typing import Any

from rankgym.errors import MapFailure
from rankgym.core import Evaluation, ModuleInfo
from rankgym.evaluators.base import Evaluator
from rankgym.rankmap import RankMap
from rankgym.store import EvaluationStore


class NotRecorded(MapFailure, LookupError):
    """The replayed store holds no evaluation of this rank map."""


class ReplayEvaluator(Evaluator):
    """Answer from ``store`` for one recorded context; a map never recorded is an error.

    Args:
        store: a store path or an open :class:`EvaluationStore`.
        backbone / task: pick the recorded context when the store holds several.
    """

    name = "replay"
    version = 1

    def __init__(self, store: str | EvaluationStore, backbone: str | None = None, task: str | None = None) -> None:
        self.store = store if isinstance(store, EvaluationStore) else EvaluationStore(store)
        self.context, self._identity, self._modules = self.store.find_context("replay", backbone, task)
        self.alpha_policy = self._identity.get("alpha_policy", Evaluator.alpha_policy)
        self.split = self._identity.get("scored_on", "validation")  # stores before v2 scored on validation

    @property
    def modules(self) -> list[ModuleInfo]:
        return self._modules

    def identity(self) -> dict[str, Any]:
        return self._identity  # the recorded identity, so the environment's store lookups hit

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        found = self.store.get(self.context, rank_map)
        if found is None:
            raise NotRecorded("this rank map was never evaluated in the replayed store")
        return found

"""The one interface behind every environment step: rank map in, :class:`Evaluation` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, ContextManager

from rankgym.core import Evaluation, ModuleInfo, adapter_params
from rankgym.rankmap import RankMap
from rankgym.recipe import ALPHA_POLICY


class Evaluator(ABC):
    """Turns a rank map into an :class:`Evaluation`.

    Subclasses set ``name`` and ``version`` (bump the version whenever results for the same key
    change, so stored evaluations are not reused across it) and describe their budget.
    """

    name: str = "evaluator"
    version: int = 1
    cacheable: bool = True  # False where a lookup costs more than the result (the fake's formula)
    parallel: int = 1  # maps an agent should propose at once (a Ray pool's workers evaluate them side by side)
    alpha_policy: dict[str, Any] = ALPHA_POLICY
    split: str = "score"  # where metrics come from: "score" (held out of training), "validation" or "closed form"
    peft_task_type: str = "SEQ_CLS"  # what an exported map's LoraConfig says (PEFT trains and saves the task head too)
    stops_early: bool = False  # may return scores stopped early (Evaluation.stopped); only such evaluators are answered with them

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
        provenance = {"backbone": ident.get("backbone"), "task": ident.get("task"), "peft_task_type": self.peft_task_type}
        return RankMap({m.name: 0 for m in self.modules}, provenance=provenance, **self.alpha_policy)

    def trainable_params(self, rank_map: RankMap) -> int:
        return adapter_params(self.modules, rank_map.ranks)

    def state_key(self) -> str:
        """What besides the map decides the next result (stored with it, looked up by it): empty
        for stateless evaluators, the episode's history for the warm start."""
        return ""

    def replay(self, rank_map: RankMap, evaluation: Evaluation) -> None:
        """The store answered ``rank_map`` with ``evaluation``: a stateful evaluator moves on as if it had evaluated it."""

    def reset_episode(self) -> None:
        """Called by the environment at ``reset()``; stateful evaluators (warm start) start over."""

    def released(self) -> ContextManager[None]:
        """A context in which the evaluator holds no model in memory, and after which it is as before:
        what lets a strategy load a model of its own beside a search's (nothing to free here)."""
        return nullcontext()

    def close(self) -> None:
        """Free what the evaluator holds (models, GPU memory)."""

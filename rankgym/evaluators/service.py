"""The one evaluation path: rank maps in, stored evaluations out.

Every caller that evaluates maps (the environment and so every agent and ``rankgym allocate``,
promotion, the fidelity benchmark) goes through an
:class:`EvaluationService`, so the rules live here once: the store answers what it holds (a
failure too, unless retried; a score stopped early only to an evaluator that stops early
itself), repeated maps in one call are evaluated once, the maps left go to
the evaluator in one ``evaluate_many`` call where it has one (batched, Ray), every result is
written to the store at once, and only a failure of the map itself
(:func:`~rankgym.core.is_map_failure`) becomes a stored result: anything else propagates and
nothing of the call is stored.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from rankgym.core import Evaluation, failed_evaluation, is_map_failure
from rankgym.evaluators.base import Evaluator
from rankgym.rankmap import RankMap
from rankgym.store import EvaluationStore


class EvaluationService:
    """An evaluator behind a store.

    Args:
        evaluator: what computes an evaluation.
        store: where evaluations are kept and looked up (under the evaluator's identity).
        retry_failed: evaluate maps whose stored evaluation failed again, instead of replaying the failure.
    """

    def __init__(self, evaluator: Evaluator, store: EvaluationStore, retry_failed: bool = False) -> None:
        self.evaluator, self.store, self.retry_failed = evaluator, store, retry_failed
        self.context = store.register(evaluator.identity(), evaluator.modules)
        self.computed = 0  # evaluations this service computed (not answered by the store)
        self._score_context: str | None = None  # the score split's context, registered at the first evaluate_both

    def lookup(self, rank_map: RankMap) -> Evaluation | None:
        """The stored evaluation (or failure) of ``rank_map``, where the evaluator's results may be reused;
        a stateful evaluator then moves on as if it had evaluated it."""
        if not self.evaluator.cacheable:
            return None
        found = self.store.get(self.context, rank_map, failures=not self.retry_failed, state_key=self.evaluator.state_key(),
                               stopped=self.evaluator.stops_early)
        if found is not None:
            self.evaluator.replay(rank_map, found)
        return found

    def evaluate(self, maps: Sequence[RankMap]) -> list[Evaluation]:
        """The evaluations of ``maps``, in order: the store's first, the distinct rest computed and stored."""
        found = [self.lookup(m) for m in maps]
        todo = list({m.key(): m for m, f in zip(maps, found) if f is None}.values())
        state = self.evaluator.state_key()  # before evaluating: a stateful evaluator takes one map at a time
        if todo and hasattr(self.evaluator, "evaluate_many"):
            evaluations = self._guarded(lambda: self.evaluator.evaluate_many(todo), todo)
        else:
            evaluations = [self._guarded(lambda: [self.evaluator.evaluate(m)], [m])[0] for m in todo]
        fresh = {m.key(): self._remember(m, e, state) for m, e in zip(todo, evaluations)}
        return [f if f is not None else fresh[m.key()] for f, m in zip(found, maps)]

    def evaluate_both(self, rank_map: RankMap) -> tuple[Evaluation, Evaluation]:
        """One fine-tune scored on the evaluator's split and on the score split (promotion's retrains,
        :meth:`~rankgym.evaluators.finetune.FinetuneEvaluator.evaluate_both`), each stored under its own identity."""
        if self._score_context is None:
            self._score_context = self.store.register(self.evaluator.score_identity(), self.evaluator.modules)
        score_context = self._score_context
        found = [self.store.get(c, rank_map, failures=not self.retry_failed) for c in (self.context, score_context)]
        if None not in found:
            return found[0], found[1]
        evaluation, scored = self._guarded(lambda: self.evaluator.evaluate_both(rank_map), [rank_map, rank_map])
        return self._remember(rank_map, evaluation, ""), self.store.put(score_context, rank_map, scored)

    def _guarded(self, call: Callable[[], Sequence[Evaluation]], maps: Sequence[RankMap]) -> list[Evaluation]:
        """``call()``'s evaluations of ``maps``; where it raised a failure of the maps themselves
        (:func:`~rankgym.core.is_map_failure`), that failure for each of them. Anything else propagates."""
        start = time.perf_counter()
        try:
            return list(call())
        except Exception as err:
            if not is_map_failure(err):
                raise
            return [failed_evaluation(err, self.evaluator.trainable_params(m), time.perf_counter() - start) for m in maps]

    def _remember(self, rank_map: RankMap, evaluation: Evaluation, state_key: str) -> Evaluation:
        """Mark a non-finite metric as an error and write the evaluation at once; returns what to act on
        (the stored result where another process stored this map first, for reusable results)."""
        if not math.isfinite(evaluation.metric):
            evaluation.error = evaluation.error or f"metric is {evaluation.metric}"
        self.computed += 1
        stored = self.store.put(self.context, rank_map, evaluation, state_key)
        return stored if self.evaluator.cacheable else evaluation

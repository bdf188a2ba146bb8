"""The ``warmstart`` evaluator: adapters carried from step to step within an episode.

The first evaluation of an episode trains fresh adapters on the full recipe. Each later one
re-ranks the trained adapters in place — growing adds zero-B components (the model's outputs do
not change), shrinking keeps the best rank-r approximation of each update (SVD) — and trains on
the next ``warm_examples`` of the training subset (wrapping round to its start), a fraction of the cost.

A result depends on the episode's history, so it is stored under that history (``state_key``).
Where the store answers a step (a resumed run), the evaluator only notes it; the first step the
store cannot answer rebuilds the adapters by training the episode's earlier steps again, the same
training in the same order, so a resumed run trains at most the unfinished episode's steps twice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

import torch

from rankgym.core import Evaluation
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.rankmap import RankMap
from rankgym.training import FinetuneResult, finetune, init_adapters


class WarmStartEvaluator(FinetuneEvaluator):
    """:class:`FinetuneEvaluator` that continues from the episode's previous adapters.

    Args:
        warm_examples: training examples after the first step (default: a quarter of the recipe's).
        **kwargs: as :class:`FinetuneEvaluator`.
    """

    name = "warmstart"
    version = 5  # 5: stored under the history of the maps before, looked up on resume

    def __init__(self, *args: Any, warm_examples: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warm_examples = warm_examples or max(self.recipe.batch_size, self.recipe.train_examples // 4)
        self.reset_episode()

    def reset_episode(self) -> None:
        self._steps: list[tuple[RankMap, bool]] = []  # the episode's maps, and whether each trained without failing
        self._resident = 0  # steps of the episode whose training the resident adapters hold

    def state_key(self) -> str:
        return hashlib.sha256("|".join(m.key() for m, _ in self._steps).encode()).hexdigest()[:16]

    def replay(self, rank_map: RankMap, evaluation: Evaluation) -> None:
        self._steps.append((rank_map, evaluation.ok))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "warm_examples": self.warm_examples}

    def _evaluate(self, rank_map: RankMap) -> Evaluation:
        start = time.perf_counter()
        if self._resident < len(self._steps):  # replayed or failed steps: train them again, in order
            self._resident = 0
            for step, (past, ok) in enumerate(self._steps):
                if ok:
                    self._train(step, past)
        step = len(self._steps)
        try:
            result = self.last_result = self._train(step, rank_map)
        except Exception:
            self._steps.append((rank_map, False))  # the adapters are half-trained: the next step rebuilds them
            raise
        self._steps.append((rank_map, True))
        self._resident = len(self._steps)
        return Evaluation(result.metric, self.trainable_params(rank_map), time.perf_counter() - start,
                          result.val_loss, result.train_loss, str(self.device))

    def _train(self, step: int, rank_map: RankMap) -> FinetuneResult:
        """Step ``step`` of the episode: fresh adapters on the full recipe where no earlier step
        trained, else the resident ones re-ranked and trained on the next ``warm_examples``."""
        if not any(ok for _, ok in self._steps[:step]):
            self.prepare(rank_map)
            init_adapters(self.model, self.seed)
            recipe, data = self.recipe, self.train_set
        else:
            # grown components drawn from the step's own generator, so a rebuild reproduces them
            self.prepare(rank_map, shrink="svd", generator=torch.Generator().manual_seed(self.seed + step))
            n = len(self.train_set)
            first = (self.recipe.train_examples + (step - 1) * self.warm_examples) % n
            data = self.train_set.take([(first + i) % n for i in range(min(self.warm_examples, n))])
            recipe = replace(self.recipe, train_examples=self.warm_examples)
        return finetune(self.model, data, self.val_set, self.tokenizer.pad_token_id, recipe, self.seed + step, progress=self.progress)

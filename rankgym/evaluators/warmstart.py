"""The ``warmstart`` evaluator: adapters carried from step to step within an episode.

The first evaluation of an episode trains fresh adapters on the full recipe. Each later one
re-ranks the trained adapters in place — growing adds zero-B components (the model's outputs do
not change), shrinking keeps the best rank-r approximation of each update (SVD) — and trains on
the next ``warm_examples`` of the training subset (wrapping round to its start), a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Any

from rankgym.core import Evaluation
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.rankmap import RankMap
from rankgym.training import finetune, init_adapters


class WarmStartEvaluator(FinetuneEvaluator):
    """:class:`FinetuneEvaluator` that continues from the episode's previous adapters.

    Args:
        warm_examples: training examples after the first step (default: a quarter of the recipe's).
        **kwargs: as :class:`FinetuneEvaluator`.
    """

    name = "warmstart"
    version = 4  # as finetune v4
    cacheable = False  # a result depends on the episode's history, and a hit would skip training the adapters

    def __init__(self, *args: Any, warm_examples: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warm_examples = warm_examples or max(self.recipe.batch_size, self.recipe.train_examples // 4)
        self.reset_episode()

    def reset_episode(self) -> None:
        self._history: list[str] = []

    def state_key(self) -> str:
        return hashlib.sha256("|".join(self._history[:-1]).encode()).hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "warm_examples": self.warm_examples}

    def _evaluate(self, rank_map: RankMap) -> Evaluation:
        start = time.perf_counter()
        step = len(self._history)
        if step == 0:
            self.prepare(rank_map)
            init_adapters(self.model, self.seed)
            recipe, data = self.recipe, self.train_set
        else:
            self.prepare(rank_map, shrink="svd")
            n = len(self.train_set)
            first = (self.recipe.train_examples + (step - 1) * self.warm_examples) % n
            data = self.train_set.take([(first + i) % n for i in range(min(self.warm_examples, n))])
            recipe = replace(self.recipe, train_examples=self.warm_examples)
        self._history.append(rank_map.key())
        result = self.last_result = finetune(self.model, data, self.val_set, self.tokenizer.pad_token_id, recipe,
                                             self.seed + step, progress=self.progress)
        return Evaluation(result.metric, self.trainable_params(rank_map), time.perf_counter() - start,
                          result.val_loss, result.train_loss, str(self.device))

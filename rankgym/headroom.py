"""Does the budget bind? Said before a search, from elastic adapters, in seconds rather than fine-tunes.

An allocation can gain at most what the budget withholds: the gap between uniform rank
``max_rank`` (no budget) and the best free heuristic at the budget (the uniform map at the budget,
PRILoRA's and EVA's, :mod:`rankgym.strategies.heuristics`). Each is scored by the elastic adapter
on the score split, once per adapter seed; the noise is the seed-to-seed standard deviation of
those scores, pooled over the maps. When the gap is inside the noise, a search is unlikely to pay.

    rankgym headroom RankSearch-minilm-cola-v0 --param-budget 0.05 --seeds 2
"""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass
class Headroom:
    """What the budget withholds, as the elastic adapter scores it.

    Attributes:
        budget_params / reference_params: the budget and uniform max_rank's adapter parameters.
        scores: label -> score-split metric per adapter seed (the heuristics and ``top``).
        top: the label of uniform at max_rank.
        best: the best heuristic at the budget (highest mean).
        gap: top's mean minus best's mean.
        noise: pooled seed standard deviation of the scores (None with one seed).
    """

    budget_params: int
    reference_params: int
    seeds: list[int]
    scores: dict[str, list[float]]
    top: str
    best: str
    gap: float
    noise: float | None

    @property
    def pays(self) -> bool | None:
        """Whether the gap exceeds the noise (None when the noise is not measured)."""
        return None if self.noise is None else self.gap > self.noise

    def sentence(self) -> str:
        points = f"{100 * self.gap:.1f} points"
        if self.noise is None:
            return (f"{self.top} scores {points} above the best free heuristic at this budget ({self.best}); one adapter seed, "
                    f"so the noise is not measured (`rankgym headroom --seeds 2` measures it)")
        if not self.pays:
            return (f"allocation cannot gain more than {points} here (seed noise {100 * self.noise:.1f} points); "
                    "a search is unlikely to pay")
        return (f"allocation can gain up to {points} here (seed noise {100 * self.noise:.1f} points): "
                f"{self.top} is that far above the best free heuristic at this budget ({self.best})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pays": self.pays, "sentence": self.sentence()}


def top_label(config) -> str:
    """The label of uniform at ``config.max_rank``, the map without a budget."""
    return f"uniform-{config.max_rank}"


def headroom_maps(config, modules, budget: int, make_room=nullcontext) -> list[tuple[str, dict[str, int]]]:
    """The maps compared, (label, ranks by name): the heuristics at the budget (EVA's probe loaded
    inside ``make_room``), then :func:`top_label`'s."""
    from rankgym.budget import project
    from rankgym.strategies.heuristics import cache_path, heuristic_maps, uniform_label

    names = [m.name for m in modules]
    uniform = project([config.max_rank] * len(modules), modules, budget, config.min_rank, config.rank_step).tolist()
    maps = [(uniform_label(uniform), dict(zip(names, uniform)))]
    maps += heuristic_maps(config, modules, budget, cache_path(config.store), make_room=make_room)
    return maps + [(top_label(config), dict.fromkeys(names, config.max_rank))]


def measure(evaluator, config, budget: int, scores: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Add one elastic evaluator's scores of :func:`headroom_maps` to ``scores`` (label -> per seed)."""
    maps = headroom_maps(config, evaluator.modules, budget, make_room=evaluator.released)
    scores = {label: [] for label, _ in maps} if scores is None else scores
    template = evaluator.template()
    for label, ranks in maps:
        scores[label].append(evaluator.evaluate(template.replace(ranks)).metric)
    return scores


def summarise(scores: dict[str, list[float]], top: str, seeds: Sequence[int], budget: int, reference: int) -> Headroom:
    heuristics = [label for label in scores if label != top]
    best = max(heuristics, key=lambda label: statistics.fmean(scores[label]))
    gap = statistics.fmean(scores[top]) - statistics.fmean(scores[best])
    noise = math.sqrt(statistics.fmean(statistics.variance(v) for v in scores.values())) if len(seeds) > 1 else None
    return Headroom(budget, reference, list(seeds), scores, top, best, gap, noise)


def headroom(config, seeds: Sequence[int] = (0, 1), on_seed=None) -> Headroom:
    """:func:`measure` with one elastic adapter per seed (one model loaded at a time), built from the
    env's ``config``; adapters are kept beside ``config.store``, so a search with that store reuses them."""
    from dataclasses import replace

    from rankgym.budget import budget_params
    from rankgym.core import adapter_params
    from rankgym.errors import ConfigError
    from rankgym.evaluators.factory import build_evaluator
    from rankgym.registry import MODEL_FREE

    if config.param_budget is None:
        raise ConfigError("headroom compares against a parameter budget: give --param-budget (a fraction of uniform max_rank, or a count)")
    if config.evaluator in MODEL_FREE:
        raise ConfigError(f"headroom trains elastic adapters on a real model; the {config.evaluator} evaluator has none")
    scores = None
    for seed in seeds:
        evaluator = build_evaluator(replace(config, evaluator="elastic", seed=seed, ray_workers=0))
        try:
            reference = adapter_params(evaluator.modules, [config.max_rank] * len(evaluator.modules))
            budget = budget_params(config.param_budget, reference)
            scores = measure(evaluator, config, budget, scores)
        finally:
            evaluator.close()
        if on_seed is not None:
            on_seed(seed)
    return summarise(scores, top_label(config), seeds, budget, reference)

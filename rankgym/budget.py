"""A parameter budget users state ("at most 40 % of uniform rank 16"), and the projection onto it.

A map over the budget is projected before it is evaluated, as AMC's action wall does
(mit-han-lab/amc, ``env/channel_pruning_env.py``): every rank is multiplied by one common factor
and rounded down to the rank grid (``min_rank + k * rank_step``, never below ``min_rank``), with the
largest factor whose map fits. The rule keeps the map's shape (which modules get more), is
deterministic, and leaves a map within the budget as it is. Written here because it is a few lines
over rankgym's own parameter count, not something a library offers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rankgym.errors import ConfigError
from rankgym.core import ModuleInfo, adapter_params


def default_lam(param_budget: float | None) -> float:
    """The cost weight when none is given: 0.5, or 0 under a budget (the reward is then the metric alone)."""
    return 0.5 if param_budget is None else 0.0


def budget_params(param_budget: float, reference: int) -> int:
    """Adapter parameters allowed: a fraction (0 < budget <= 1) of ``reference``, or an absolute count (> 1)."""
    if isinstance(param_budget, bool) or not isinstance(param_budget, (int, float)) or param_budget <= 0:
        raise ConfigError(f"param_budget must be a fraction in (0, 1] of the uniform map at max_rank, or a parameter count > 1; "
                          f"got {param_budget!r}")
    return int(param_budget * reference) if param_budget <= 1 else int(param_budget)


def rank_grid(min_rank: int, max_rank: int, rank_step: int) -> list[int]:
    """The ranks a module may take: ``min_rank``, ``min_rank + rank_step``, ..., and ``max_rank`` itself
    where the step skips it (the env clips a grown rank to ``max_rank``, so it is reachable)."""
    grid = list(range(min_rank, max_rank + 1, rank_step))
    if not grid or grid[-1] != max_rank:
        grid.append(max_rank)
    return grid


def largest_factor(fits: Callable[[float], bool]) -> float:
    """The largest factor in [0, 1] for which ``fits`` holds, by bisection; ``fits`` must only turn
    false as the factor grows (a map scaled by it costs more), and hold at 0."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _on_grid(ranks: np.ndarray, factor: float, min_rank: int, rank_step: int) -> np.ndarray:
    steps = np.floor((ranks * factor - min_rank) / rank_step + 1e-9)
    return np.where(ranks > 0, np.maximum(min_rank + steps * rank_step, min_rank), ranks).astype(np.int64)


def on_grid(ranks: Sequence[int], min_rank: int = 0, rank_step: int = 1) -> np.ndarray:
    """``ranks`` rounded down onto the rank grid (0 stays 0), so a map within a budget stays within it."""
    return _on_grid(np.asarray(ranks, dtype=np.int64), 1.0, min_rank, rank_step)


def project(ranks: Sequence[int], modules: list[ModuleInfo], budget: int, min_rank: int = 0, rank_step: int = 1) -> np.ndarray:
    """``ranks`` if they fit ``budget`` adapter parameters, else the projection described above.

    Raises :class:`ConfigError` where even ``min_rank`` everywhere exceeds the budget.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if adapter_params(modules, ranks) <= budget:
        return ranks
    floor = _on_grid(ranks, 0.0, min_rank, rank_step)
    if adapter_params(modules, floor) > budget:
        raise ConfigError(f"param_budget of {budget:,} adapter parameters is below what min_rank={min_rank} on every module costs "
                          f"({adapter_params(modules, floor):,}); raise the budget or lower min_rank")
    factor = largest_factor(lambda f: adapter_params(modules, _on_grid(ranks, f, min_rank, rank_step)) <= budget)
    return _on_grid(ranks, factor, min_rank, rank_step)


def budget_rank(modules: Sequence[ModuleInfo], budget_params: int) -> int:
    """The uniform rank a parameter budget buys (at least 1): PEFT's allocators take a mean rank."""
    return max(1, round(budget_params / sum(m.in_features + m.out_features for m in modules)))

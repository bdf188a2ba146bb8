"""The obvious alternatives a search must beat: uniform ranks, the article's presets, the spectral rule, PRILoRA."""

from __future__ import annotations

from typing import Sequence

from rankgym.budget import largest_factor
from rankgym.core import ModuleInfo, adapter_params

# The article's layer-type presets (section 5.1): rank per module kind, low / medium / high.
# A gated MLP's gate gets its up projection's rank; a module no table knows ("other") the middle one.
PRESETS: dict[str, dict[str, int]] = {
    "low": {"query": 4, "key": 4, "value": 4, "attn_out": 8, "mlp_in": 8, "mlp_gate": 8, "mlp_out": 16, "other": 8},
    "medium": {"query": 8, "key": 8, "value": 8, "attn_out": 16, "mlp_in": 16, "mlp_gate": 16, "mlp_out": 32, "other": 16},
    "high": {"query": 16, "key": 16, "value": 16, "attn_out": 32, "mlp_in": 32, "mlp_gate": 32, "mlp_out": 64, "other": 32},
}


def _limit(m: ModuleInfo) -> int:
    return min(m.in_features, m.out_features)


def uniform_ranks(modules: Sequence[ModuleInfo], rank: int) -> list[int]:
    return [min(rank, _limit(m)) for m in modules]


def preset_ranks(modules: Sequence[ModuleInfo], level: str) -> list[int]:
    """The article's preset for each module's kind.

    GPT-2's fused ``c_attn`` (kind ``qkv``) gets 1.5x the query/key/value rank, rounded: at that
    rank one fused d -> 3d adapter has as many parameters as three separate d -> d adapters of the
    preset rank (r' (d + 3d) = 3 r (d + d)).
    """
    table = PRESETS[level]
    ranks = []
    for m in modules:
        rank = round(1.5 * table["query"]) if m.kind == "qkv" else table[m.kind]
        ranks.append(min(rank, _limit(m)))
    return ranks


def prilora_ranks(modules: Sequence[ModuleInfo], mean_rank: int) -> list[int]:
    """PRILoRA's schedule (Benedek and Wolf, 2024): ranks rising linearly with depth, from half of
    ``mean_rank`` in the first block to 1.5 times it in the last (their 4 -> 12 for a mean of 8),
    every module of a block alike; the map costs about what uniform ``mean_rank`` costs."""
    deepest = max(1, max(m.layer for m in modules))
    return [min(_limit(m), max(1, round(mean_rank * (0.5 + m.layer / deepest)))) for m in modules]


def spectral_ranks(modules: Sequence[ModuleInfo], fraction: float, budget_params: int | None = None) -> list[int]:
    """The article's spectral rule, scaled to a parameter budget.

    Each module's rank is the number of singular values of its frozen weight that reach
    ``fraction`` of their sum (section 3.2). Those ranks are far above what LoRA uses, so with a
    ``budget_params`` they are scaled by one common factor (found by bisection) until the map costs
    at most that budget; the proportions between modules are kept.
    """
    raw = [m.energy_rank(fraction) for m in modules]
    if budget_params is None:
        return [min(r, _limit(m)) for r, m in zip(raw, modules)]

    def scaled(factor: float) -> list[int]:
        return [min(_limit(m), max(1, round(factor * r))) for r, m in zip(raw, modules)]

    return scaled(largest_factor(lambda f: adapter_params(modules, scaled(f)) <= budget_params))


def baseline_maps(modules: Sequence[ModuleInfo], kinds: str = "uniform", budget_params: int | None = None,
                  uniform: Sequence[int] = (2, 4, 8, 16)) -> list[tuple[str, list[int]]]:
    """Named rank lists for one family of baselines: ``uniform``, ``presets``, ``spectral`` or ``prilora``."""
    if kinds == "uniform":
        return [(f"uniform-{r}", uniform_ranks(modules, r)) for r in uniform]
    if kinds == "presets":
        return [(f"preset-{level}", preset_ranks(modules, level)) for level in PRESETS]
    if kinds == "prilora":
        return [(f"prilora-{r}", prilora_ranks(modules, r)) for r in uniform]
    if kinds == "spectral":
        return [(f"spectral-{round(f * 100)}", spectral_ranks(modules, f, budget_params)) for f in (0.8, 0.9, 0.95)]
    raise ValueError(f"unknown baseline family {kinds!r}: uniform, presets, spectral or prilora")

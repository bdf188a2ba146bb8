"""Non-RL rank choosers: each turns a module list (and a budget) into rank maps to evaluate.

They all speak :class:`~rankgym.core.ModuleInfo`, so they work on any backbone the
environment knows, fake included.
"""

from rankgym.strategies.baselines import PRESETS, baseline_maps, preset_ranks, prilora_ranks, spectral_ranks, uniform_ranks

__all__ = ["PRESETS", "baseline_maps", "preset_ranks", "prilora_ranks", "spectral_ranks", "uniform_ranks"]

"""The agents, one readable script each (CleanRL style), and the one registry that names them.

Every script has an ``Args`` dataclass (the common :class:`rankgym.harness.SearchArgs` and its own
fields) and ``run(args)``; ``rankgym search --agent NAME`` and :func:`run` go through
:data:`AGENTS`, so a new agent is one file and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Any, Sequence

# name -> (module in rankgym.agents, fields that name fixes)
AGENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ppo": ("ppo", {}),
    "ppo-steps": ("ppo_steps", {}),
    "random": ("random_search", {}),
    "tpe": ("tpe", {}),
    **{family: ("baselines", {"family": family}) for family in ("uniform", "presets", "spectral", "prilora")},
    "adalora": ("adalora", {}),
    "eva": ("eva", {}),
    "growth": ("growth", {}),
    "autolora": ("autolora", {}),
}


def run(agent: str, common: dict[str, Any], settings: dict[str, Any], n_envs: int = 1, devices: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``agent`` with the common arguments and its ``settings`` (``--set KEY=VALUE``): an agent's own
    fields, or for ``ppo-steps`` Stable-Baselines3's hyperparameters. An unknown setting is refused, never ignored."""
    from rankgym.errors import ConfigError

    module_name, fixed = AGENTS[agent]
    module = importlib.import_module(f"rankgym.agents.{module_name}")
    names = {f.name for f in fields(module.Args)}
    if "hyperparams" in names:  # its --set goes to SB3; it runs several environments
        return module.run(module.Args(**common, **fixed, hyperparams=settings, n_envs=n_envs, devices=list(devices)))
    own = names - set(common) - set(fixed)
    if unknown := sorted(set(settings) - own):
        raise ConfigError(f"unknown --set {', '.join(unknown)} for {agent}; it takes {', '.join(sorted(own)) or 'none'}")
    return module.run(module.Args(**common, **fixed, **settings))

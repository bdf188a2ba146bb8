"""The obvious alternatives, evaluated through the same environment and store as every agent.

    python agents/baselines.py --env-id RankSearch-minilm-sst2-v0 --family presets

Families (rankgym.strategies): ``uniform`` (ranks 2, 4, 8, 16), ``presets`` (the article's
low / medium / high per module kind), ``spectral`` (80 / 90 / 95 % singular-value mass of each
frozen weight, scaled to the parameter budget of the uniform map at the env's initial rank).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Args:
    env_id: str = "RankSearch-fake-v0"
    """registered environment id"""
    family: str = "uniform"
    """uniform, presets or spectral"""
    budget: int = 16
    """at most this many maps (each family has 3 or 4)"""
    seed: int = 0
    """seeds the environment"""
    out: str | None = None
    """run folder (default runs/<env>__<family>__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --out"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """gym.make overrides"""


def run(args: Args) -> dict[str, Any]:
    from rankgym.run import evaluate_ranks, finish_search, open_search
    from rankgym.strategies import baseline_maps

    started = time.time()
    run_dir, env, log, progress = open_search(args.env_id, args.family, args.budget, args.seed, args.out, args.resume, args.env_kwargs)
    budget_params = int(env.initial @ [m.in_features + m.out_features for m in env.modules])
    for label, ranks in baseline_maps(env.modules, args.family, budget_params)[: args.budget]:
        evaluate_ranks(env, log, progress, ranks, label)
    return finish_search(run_dir, env, started, args.family, progress)


if __name__ == "__main__":
    import argparse

    from ppo import key_values

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default=Args.env_id)
    parser.add_argument("--family", default=Args.family, choices=["uniform", "presets", "spectral"])
    parser.add_argument("--budget", type=int, default=Args.budget)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="gym.make override")
    ns = parser.parse_args()
    print(run(Args(ns.env_id, ns.family, ns.budget, ns.seed, ns.out, ns.resume, key_values(ns.env))))

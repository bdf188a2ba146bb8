"""Random search: rank maps drawn uniformly, each module's rank independently from the env's choices.

    python agents/random_search.py --env-id RankSearch-fake-v0 --budget 256 --seed 1

The choices are min_rank, min_rank + rank_step, ..., max_rank: the maps PPO can reach.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Args:
    env_id: str = "RankSearch-fake-v0"
    """registered environment id"""
    budget: int = 256
    """rank maps to evaluate"""
    seed: int = 0
    """seeds the draws and the environment"""
    out: str | None = None
    """run folder (default runs/<env>__random__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --out"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """gym.make overrides"""


def run(args: Args) -> dict[str, Any]:
    from rankgym.run import evaluate_ranks, finish_search, open_search

    started = time.time()
    run_dir, env, log, progress = open_search(args.env_id, "random", args.budget, args.seed, args.out, args.resume, args.env_kwargs)
    rng = np.random.default_rng(args.seed)
    choices = np.arange(env.min_rank, env.max_rank + 1, env.rank_step)
    for _ in range(args.budget):
        evaluate_ranks(env, log, progress, rng.choice(choices, size=len(env.names)))
    return finish_search(run_dir, env, started, "random", progress)


if __name__ == "__main__":
    import argparse

    from ppo import key_values

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default=Args.env_id)
    parser.add_argument("--budget", type=int, default=Args.budget)
    parser.add_argument("--seed", type=int, default=Args.seed)
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="gym.make override")
    ns = parser.parse_args()
    print(run(Args(ns.env_id, ns.budget, ns.seed, ns.out, ns.resume, key_values(ns.env))))

"""Optuna's TPE sampler over the same per-module rank choices: the tool a user would otherwise pick.

    python agents/tpe.py --env-id RankSearch-fake-v0 --budget 256 --seed 1   (pip install rankgym[tpe])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Args:
    env_id: str = "RankSearch-fake-v0"
    """registered environment id"""
    budget: int = 256
    """rank maps (trials) to evaluate"""
    seed: int = 0
    """seeds the sampler and the environment"""
    out: str | None = None
    """run folder (default runs/<env>__tpe__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --out"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """gym.make overrides"""


def run(args: Args) -> dict[str, Any]:
    try:
        import optuna
    except ImportError:
        from rankgym.errors import ConfigError

        raise ConfigError("the tpe agent needs Optuna: pip install 'rankgym[tpe]'") from None
    from rankgym.run import evaluate_ranks, finish_search, open_search

    started = time.time()
    run_dir, env, log, progress = open_search(args.env_id, "tpe", args.budget, args.seed, args.out, args.resume, args.env_kwargs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))

    def objective(trial) -> float:
        ranks = [trial.suggest_int(name, env.min_rank, env.max_rank, step=env.rank_step) for name in env.names]
        info = evaluate_ranks(env, log, progress, ranks)
        return info["reward"]

    study.optimize(objective, n_trials=args.budget)
    return finish_search(run_dir, env, started, "tpe", progress)


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

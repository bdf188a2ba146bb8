"""PPO against random search at the same number of evaluations, on the fake environment.

    python benchmarks/ppo_vs_random.py --budget 1024 --seeds 0 1 2 3 4

Prints each seed's best reward, the medians, and the exact optimum the fake evaluator knows.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import gymnasium as gym
from rankgym.agents import ppo, random_search

import rankgym  # noqa: F401

ENV_ID = "RankSearch-fake-v0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    results: dict[str, list[float]] = {"ppo": [], "random": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for agent, module in (("random", random_search), ("ppo", ppo)):
                out = str(Path(tmp) / f"{agent}-{seed}")
                kwargs = dict(env_id=ENV_ID, budget=args.budget, seed=seed, out=out)
                summary = module.run(module.Args(**kwargs))
                results[agent].append(summary["best_reward"])
                print(f"seed {seed} {agent:6s} best reward {summary['best_reward']:.4f} ({summary['seconds']:.0f} s)", flush=True)

    print(f"\nbudget {args.budget} evaluations, seeds {args.seeds}")
    for agent, values in results.items():
        print(f"{agent:6s} median best reward {statistics.median(values):.4f}  (all: {', '.join(f'{v:.4f}' for v in values)})")
    for seed in args.seeds:  # each seed draws its own landscape
        env = gym.make(ENV_ID, seed=seed).unwrapped
        choices = list(range(env.min_rank, env.max_rank + 1, env.rank_step))
        _, optimum = env.evaluator.optimum(env.lam, choices, env.reference_params)
        uniform = env.evaluator.metric_of(env.initial) - env.lam * env.cost(env.initial)
        print(f"seed {seed}: start (uniform rank {env.initial[0]}) {uniform:.4f}   exact optimum {optimum:.4f}")


if __name__ == "__main__":
    main()

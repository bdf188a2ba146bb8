"""Do maps that differ in one module score alike? The score difference between near-identical maps.

    python benchmarks/near_identical.py                 # MiniLM x SST-2 at the env's budget (1,024 examples)
    python benchmarks/near_identical.py --bases 4 --seed 1

Draws ``--bases`` random maps on the env's grid and, for each, variants that move one module by one
rank step (the smallest change a search makes). Every map is fine-tuned at the env's budget with
one seed and scored on the score split. It prints the mean and largest absolute score difference
between a base map and its variants: what a search sees as "the effect" of one module's rank,
most of which is initialisation noise when the modules' random draws are coupled.
"""

from __future__ import annotations

import argparse
import statistics

import gymnasium as gym
import numpy as np

import rankgym  # noqa: F401  (registers the envs)
from rankgym.budget import rank_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="RankSearch-minilm-sst2-v0")
    parser.add_argument("--bases", type=int, default=4, help="random base maps")
    parser.add_argument("--variants", type=int, default=3, help="one-module variants per base map")
    parser.add_argument("--seed", type=int, default=0, help="training seed (one for every map)")
    args = parser.parse_args()

    env = gym.make(args.env_id, device="cpu")
    ev = env.unwrapped.evaluator
    grid = np.array(rank_grid(env.unwrapped.min_rank, env.unwrapped.max_rank, env.unwrapped.rank_step))
    rng = np.random.default_rng(1234)  # the same maps for every seed and every version of the code
    template, n = ev.template(), len(ev.modules)
    diffs, seconds = [], []
    for b in range(args.bases):
        ranks = [int(r) for r in rng.choice(grid[1:-1], size=n)]  # inner grid: every module can move both ways
        evaluation = ev.evaluate(template.replace(dict(zip(template.ranks, ranks))))
        base = evaluation.metric
        seconds.append(evaluation.seconds)
        for _ in range(args.variants):
            i, step = int(rng.integers(n)), int(rng.choice([-1, 1])) * env.unwrapped.rank_step
            moved = list(ranks)
            moved[i] += step
            evaluation = ev.evaluate(template.replace(dict(zip(template.ranks, moved))))
            metric = evaluation.metric
            seconds.append(evaluation.seconds)
            diffs.append(abs(metric - base))
            print(f"base {b} ({base:.4f}), module {i} {ranks[i]} -> {moved[i]}: {metric:.4f}  |diff| {abs(metric - base):.4f}", flush=True)
    print(f"{len(diffs)} pairs: mean |score difference| {statistics.mean(diffs):.4f}, "
          f"median {statistics.median(diffs):.4f}, max {max(diffs):.4f}; {statistics.mean(seconds):.1f} s per evaluation")
    env.close()


if __name__ == "__main__":
    main()

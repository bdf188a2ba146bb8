"""Random search: rank maps drawn uniformly, each module's rank independently from the env's choices.

    python agents/random_search.py --env-id RankSearch-fake-v0 --budget 256 --seed 1

The choices are min_rank, min_rank + rank_step, ..., max_rank: the maps PPO can reach. Under a
parameter budget the free heuristics (uniform, PRILoRA, EVA at the budget) are evaluated first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankgym.budget import rank_grid
from rankgym.harness import SearchArgs, evaluate_batch, evaluate_starts, finish_search, open_search, parse_cli


@dataclass
class Args(SearchArgs):
    """Random search takes only the common arguments."""


def run(args: Args) -> dict[str, Any]:
    started = time.time()
    run_dir, env, log, progress = open_search(args, "random")
    rng = np.random.default_rng(args.seed)
    choices = rank_grid(env.min_rank, env.max_rank, env.rank_step)
    done = evaluate_starts(env, log, progress, args.budget)
    while done < args.budget:  # one map at a time, or a Ray pool's worth: the same maps in the same order
        batch = [rng.choice(choices, size=len(env.names)) for _ in range(min(env.evaluator.parallel, args.budget - done))]
        evaluate_batch(env, log, progress, batch)
        done += len(batch)
    return finish_search(run_dir, env, started, progress, args)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

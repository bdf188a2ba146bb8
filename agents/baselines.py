"""The obvious alternatives, evaluated through the same environment and store as every agent.

    python agents/baselines.py --env-id RankSearch-minilm-sst2-v0 --family presets

Families (rankgym.strategies): ``uniform`` (ranks 2, 4, 8, 16), ``presets`` (the article's
low / medium / high per module kind), ``spectral`` (80 / 90 / 95 % singular-value mass of each
frozen weight, scaled to the parameter budget of the uniform map at the env's initial rank),
``prilora`` (ranks rising linearly with depth, at the cost of uniform 2, 4, 8 and 16).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rankgym.core import adapter_params
from rankgym.harness import SearchArgs, evaluate_batch, finish_search, open_search, parse_cli
from rankgym.strategies import baseline_maps


@dataclass
class Args(SearchArgs):
    family: str = "uniform"  # uniform, presets, spectral or prilora
    budget: int = 16  # at most this many maps (each family has 3 or 4)


def run(args: Args) -> dict[str, Any]:
    started = time.time()
    run_dir, env, log, progress = open_search(args, args.family)
    budget_params = adapter_params(env.modules, env.initial)
    maps = baseline_maps(env.modules, args.family, budget_params)[: args.budget]
    evaluate_batch(env, log, progress, [ranks for _, ranks in maps], [label for label, _ in maps])  # side by side on a Ray pool
    return finish_search(run_dir, env, started, progress, args)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

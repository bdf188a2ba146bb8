"""Dynamic rank growth (the seed article, section 5.2): one fine-tune whose adapters grow by a
schedule (``linear``, ``step`` or ``adaptive``); the final ranks are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent growth --set schedule=adaptive --param-budget 0.05

``linear`` and ``step`` grow every module alike from ``max_rank / 4`` to the uniform rank the budget
buys (the env's ``--param-budget``, else the uniform map the env starts from), so their map is
uniform; ``adaptive`` starts every module at rank 1 and grows the most important ones by 4 until
the budget is spent (so it needs a budget above uniform rank 1, and at exactly uniform rank 1 it
has nothing to grow) (see :mod:`rankgym.strategies.growth`). The map is scored like any searched
map and promoted; the run's seconds include the fine-tune.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from rankgym.errors import ConfigError
from rankgym.evaluators.base import adapter_params
from rankgym.recipe import Recipe
from rankgym.run import SearchArgs, evaluate_ranks, finish_search, open_search, parse_cli, strategy_budget, task_model


@dataclass
class Args(SearchArgs):
    schedule: str = "adaptive"  # linear, step or adaptive
    train_examples: int = 8192  # the growing fine-tune (the full recipe's)


def run(args: Args) -> dict[str, Any]:
    from rankgym.strategies.growth import SCHEDULES, grow
    from rankgym.strategies.peft_allocators import budget_rank

    if args.schedule not in SCHEDULES:
        raise ConfigError(f"unknown growth schedule {args.schedule!r}; use --set schedule={' | '.join(SCHEDULES)}")
    started = time.time()
    args = replace(args, budget=1)  # one map, one evaluation
    run_dir, env, log, progress = open_search(args, "growth")
    recipe = Recipe(train_examples=args.train_examples)
    budget = strategy_budget(env)
    if adapter_params(env.modules, [1] * len(env.modules)) > budget:
        raise ConfigError(f"growth starts every module at rank 1 ({adapter_params(env.modules, [1] * len(env.modules)):,} parameters), "
                          f"over the budget of {budget:,}; raise --param-budget")
    top = budget_rank(env.modules, budget)
    low, high = (1, env.max_rank) if args.schedule == "adaptive" else (max(1, top // 4), top)
    base = task_model(args, "growth", recipe)
    ranks = grow(base.model, env.modules, base.train_set, base.val_set, base.tokenizer.pad_token_id, args.schedule, low, high,
                 budget, recipe, args.seed)
    base.close()
    evaluate_ranks(env, log, progress, [ranks[n] for n in env.names], f"growth-{args.schedule}")
    return finish_search(run_dir, env, started, progress, args)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

"""Dynamic rank growth (the seed article, section 5.2): one fine-tune whose adapters grow by a
schedule (``linear``, ``step`` or ``adaptive``); the final ranks are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent growth --set schedule=adaptive --param-budget 0.1

``linear`` and ``step`` grow every module alike from ``max_rank / 4`` to the uniform rank the budget
buys (the env's ``--param-budget``, else the uniform map the env starts from), so their map is
uniform; ``adaptive`` starts every module at rank 1 and grows the most important ones by 4 until
the budget is spent (so it needs a budget above uniform rank 1, and at exactly uniform rank 1 it
has nothing to grow) (see :mod:`rankgym.strategies.growth`). The map is scored like any searched
map and promoted; the run's seconds include the fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankgym.errors import ConfigError
from rankgym.recipe import Recipe
from rankgym.harness import SearchArgs, one_shot, parse_cli, strategy_budget


@dataclass
class Args(SearchArgs):
    schedule: str = "adaptive"  # linear, step or adaptive
    train_examples: int = 8192  # the growing fine-tune (the full recipe's)


def run(args: Args) -> dict[str, Any]:
    from rankgym.budget import budget_rank
    from rankgym.strategies.growth import SCHEDULES, grow

    if args.schedule not in SCHEDULES:
        raise ConfigError(f"unknown growth schedule {args.schedule!r}; use --set schedule={' | '.join(SCHEDULES)}")
    recipe = Recipe(train_examples=args.train_examples)

    def propose(env, base) -> dict[str, int]:
        budget = strategy_budget(env)
        top = budget_rank(env.modules, budget)
        low, high = (1, env.max_rank) if args.schedule == "adaptive" else (max(1, top // 4), top)
        return grow(base.model, env.modules, base.train_set, base.val_set, base.tokenizer.pad_token_id, args.schedule, low, high,
                    budget, recipe, args.seed)

    return one_shot(args, "growth", recipe, propose, needs_rank_1="growth starts every module at rank 1")


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

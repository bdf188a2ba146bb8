"""EVA (PEFT's ``EvaConfig`` and ``initialize_lora_eva_weights``): ranks from SVDs of each
module's input activations on a few training batches, no training; its ranks are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent eva --param-budget 0.05

The budget is the env's ``--param-budget`` (else the uniform map the env starts from), turned into
EVA's mean rank ``r``; ``rho`` caps a module at rho x r. The map is scored like any searched map
(projected onto the budget if it overshoots) and promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankgym.recipe import Recipe
from rankgym.harness import SearchArgs, one_shot, parse_cli, strategy_budget


@dataclass
class Args(SearchArgs):
    rho: float = 2.0  # a module gets at most rho x the mean rank (PEFT's default)
    batches: int = 16  # training batches (of 32) whose activations the SVDs see


def run(args: Args) -> dict[str, Any]:
    from rankgym.budget import budget_rank
    from rankgym.strategies.peft_allocators import eva_ranks

    return one_shot(args, "eva", Recipe(train_examples=32 * args.batches), lambda env, base: eva_ranks(
        base.model, env.modules, base.train_set, base.tokenizer.pad_token_id, budget_rank(env.modules, strategy_budget(env)),
        args.rho, args.batches, seed=args.seed))


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

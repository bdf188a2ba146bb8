"""AdaLoRA (PEFT's ``AdaLoraConfig`` and ``update_and_allocate``): one fine-tune that prunes ranks
by importance; its final ranks are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent adalora --param-budget 0.1

The budget is the env's ``--param-budget`` (else the uniform map the env starts from), turned into
AdaLoRA's mean target rank; the map is then scored like any searched map (projected onto the
budget if AdaLoRA overshoots it) and promoted. The run's seconds include the fine-tune. PEFT's
target rank is a whole number, so AdaLoRA keeps at least as many components as uniform rank 1 has:
a budget below that is refused (projecting its map there would scale every rank-1 module to 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankgym.recipe import Recipe
from rankgym.harness import SearchArgs, one_shot, parse_cli, strategy_budget


@dataclass
class Args(SearchArgs):
    train_examples: int = 8192  # AdaLoRA's fine-tune (the full recipe's)
    init_ratio: float = 1.5  # initial rank / target rank (the paper's 12 -> 8)


def run(args: Args) -> dict[str, Any]:
    from rankgym.budget import budget_rank
    from rankgym.strategies.peft_allocators import adalora_ranks

    recipe = Recipe(train_examples=args.train_examples)
    return one_shot(args, "adalora", recipe, lambda env, base: adalora_ranks(
        base.model, env.modules, base.train_set, base.val_set, base.tokenizer.pad_token_id,
        budget_rank(env.modules, strategy_budget(env)), recipe, args.seed, args.init_ratio),
        needs_rank_1="AdaLoRA keeps at least uniform rank 1's components")


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

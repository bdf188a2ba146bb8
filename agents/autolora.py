"""AutoLoRA (the seed article, section 4.1): gated rank components searched on held-out training
batches under a parameter budget; the components that survive the hard threshold are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent autolora --param-budget 0.05

The budget is the env's ``--param-budget`` (else the uniform map the env starts from); every
module starts at the env's ``max_rank`` (see :mod:`rankgym.strategies.autolora`). The map is
scored like any searched map and promoted; the run's seconds include the gate search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankgym.recipe import Recipe
from rankgym.harness import SearchArgs, one_shot, parse_cli, strategy_budget


@dataclass
class Args(SearchArgs):
    train_examples: int = 8192  # the gate search's fine-tune (the full recipe's); a fifth of it is held out for the gates
    gate_lr: float = 10.0  # SGD step of the selection logits
    penalty: float = 1.0  # weight of the over-budget term


def run(args: Args) -> dict[str, Any]:
    from rankgym.strategies.autolora import autolora_ranks

    recipe = Recipe(train_examples=args.train_examples)
    return one_shot(args, "autolora", recipe, lambda env, base: autolora_ranks(
        base.model, env.modules, base.train_set, base.tokenizer.pad_token_id, strategy_budget(env), env.max_rank,
        recipe, args.seed, args.gate_lr, args.penalty)[0])


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

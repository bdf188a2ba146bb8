"""AutoLoRA (the seed article, section 4.1): gated rank components searched on held-out training
batches under a parameter budget; the components that survive the hard threshold are the map.

    rankgym search RankSearch-minilm-rte-v0 --agent autolora --param-budget 0.05

The budget is the env's ``--param-budget`` (else the uniform map the env starts from); every
module starts at the env's ``max_rank`` (see :mod:`rankgym.strategies.autolora`). The map is
scored like any searched map and promoted; the run's seconds include the gate search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from rankgym.recipe import Recipe
from rankgym.run import SearchArgs, evaluate_ranks, finish_search, open_search, parse_cli, strategy_budget, task_model


@dataclass
class Args(SearchArgs):
    train_examples: int = 8192  # the gate search's fine-tune (the full recipe's); a fifth of it is held out for the gates
    gate_lr: float = 10.0  # SGD step of the selection logits
    penalty: float = 1.0  # weight of the over-budget term


def run(args: Args) -> dict[str, Any]:
    from rankgym.strategies.autolora import autolora_ranks

    started = time.time()
    args = replace(args, budget=1)  # one map, one evaluation
    run_dir, env, log, progress = open_search(args, "autolora")
    recipe = Recipe(train_examples=args.train_examples)
    base = task_model(args, "autolora", recipe)
    ranks, _ = autolora_ranks(base.model, env.modules, base.train_set, base.tokenizer.pad_token_id, strategy_budget(env), env.max_rank,
                              recipe, args.seed, args.gate_lr, args.penalty)
    base.close()
    evaluate_ranks(env, log, progress, [ranks[n] for n in env.names], "autolora")
    return finish_search(run_dir, env, started, progress, args)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

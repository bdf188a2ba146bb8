"""Optuna's TPE sampler over the same per-module rank choices: the tool a user would otherwise pick.

    python agents/tpe.py --env-id RankSearch-fake-v0 --budget 256 --seed 1   (pip install rankgym[tpe])

Under a parameter budget the free heuristics (uniform, PRILoRA, EVA at the budget) are its first
trials (Optuna's ``enqueue_trial``), so TPE models the space from them on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from rankgym.errors import ConfigError
from rankgym.harness import SearchArgs, evaluate_batch, finish_search, heuristic_starts, open_search, parse_cli


@dataclass
class Args(SearchArgs):
    """TPE takes only the common arguments; each trial is one map."""


def run(args: Args) -> dict[str, Any]:
    try:
        import optuna
    except ImportError:
        raise ConfigError("the tpe agent needs Optuna: pip install 'rankgym[tpe]'") from None

    started = time.time()
    run_dir, env, log, progress = open_search(args, "tpe")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))

    def ranks(trial) -> list[int]:
        return [trial.suggest_int(name, env.min_rank, env.max_rank, step=env.rank_step) for name in env.names]

    starts = heuristic_starts(env)[: args.budget]
    for _, start in starts:
        study.enqueue_trial(dict(zip(env.names, start)))
    labels = [label for label, _ in starts]
    done = 0
    while done < args.budget:  # ask / tell: as many trials in flight as the env evaluates at once (a Ray pool's workers)
        trials = [study.ask() for _ in range(min(env.evaluator.parallel, args.budget - done))]
        batch_labels = (labels[done:done + len(trials)] + [None] * len(trials))[: len(trials)]
        for trial, info in zip(trials, evaluate_batch(env, log, progress, [ranks(t) for t in trials], batch_labels)):
            study.tell(trial, info["reward"])
        done += len(trials)
    return finish_search(run_dir, env, started, progress, args)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

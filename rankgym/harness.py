"""What every agent script shares (the CleanRL-style files in ``agents/``): the common arguments
(:class:`SearchArgs` and the command line), opening a search (run folder, environment, step log,
progress bar, the headroom line), the free heuristics a search starts from, evaluating maps
through the environment, one-shot strategies, and finishing (promotion, answer, summary)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

import gymnasium as gym
from tqdm.auto import tqdm

from rankgym import defaults
from rankgym.errors import ConfigError
from rankgym.files import read_json
from rankgym.promotion import Promotion
from rankgym.recipe import Recipe
from rankgym.run import HEADROOM_FILE, RunDir, run_folder
from rankgym.steplog import StepLog


class Progress:
    """A bar over the budget: evaluations done, best reward so far, maps whose scoring stopped early, ETA; and once the first
    ``MEASURED`` evaluations are done, one line with the duration they predict on this machine
    (machines differ threefold and more: a README's times are another machine's)."""

    MEASURED = 3

    def __init__(self, budget: int, desc: str) -> None:
        self.bar = tqdm(total=budget, desc=desc, unit="eval", dynamic_ncols=True)
        self.best, self.metric, self.stopped = -math.inf, math.nan, 0
        self.budget, self.done, self.started = budget, 0, time.perf_counter()

    def __call__(self, kind: str, info: dict[str, Any], reward: float) -> None:
        if kind == "reset":
            return
        if info.get("fraction", 1.0) < 1.0:  # an estimate, not a score (stopped early): counted, never the best
            self.stopped += 1
        elif info["error"] is None and info["score"] > self.best:
            self.best, self.metric = info["score"], info["metric"]
        if self.best > -math.inf:
            self.bar.set_postfix(best_reward=f"{self.best:.4f}", metric=f"{self.metric:.4f}", **({"stopped": self.stopped} if self.stopped else {}))
        self.bar.update(1)
        self.done += 1
        if self.done == self.MEASURED < self.budget:
            each = (time.perf_counter() - self.started) / self.done
            tqdm.write(f"expected: about {duration(each * (self.budget - self.done))} more for the other {self.budget - self.done} "
                       f"evaluations ({each:.1f} s each so far on this machine; promotion comes after)")

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """``seconds`` as a person says it: 40 s, 12 min, 2.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def open_search(args: "SearchArgs", agent: str):
    """Run folder, environment (writing to the run's store), step log and progress bar of a map-proposing agent."""
    import rankgym  # noqa: F401  (registers the ids)

    out = args.out or run_folder(args.env_id, agent, args.seed)
    run_dir = RunDir(out, {"agent": agent, **args.config()}, resume=args.resume)
    with run_dir.opening():
        env = gym.make(args.env_id, **args.env_kwargs_for_run(str(run_dir.evaluation_store))).unwrapped
    report_headroom(run_dir, env)
    return run_dir, env, run_dir.log(allow_divergence=args.allow_divergence), Progress(args.budget, f"{agent} {args.env_id}")


def report_headroom(run_dir: "RunDir", env) -> None:
    """Under a budget with the elastic evaluator, say first whether the budget binds (:mod:`rankgym.headroom`),
    from the search's own adapter (seconds); kept in the run folder for summary.json."""
    from rankgym.evaluators.elastic import ElasticEvaluator
    from rankgym.headroom import measure, summarise, top_label

    path = run_dir.path / HEADROOM_FILE
    if env.budget is None or not isinstance(env.evaluator, ElasticEvaluator):
        return
    if not path.is_file():
        scores = measure(env.evaluator, env.config, env.budget)
        found = summarise(scores, top_label(env.config), [env.evaluator.seed], env.budget, env.reference_params)
        path.write_text(json.dumps(found.to_dict(), indent=2) + "\n")
    found = read_json(path, "a run's headroom.json")
    tqdm.write(f"headroom: {found['sentence']}")


def heuristic_starts(env) -> list[tuple[str, list[int]]]:
    """The free heuristics at the env's parameter budget, as (label, ranks in module order) on its grid.

    The uniform map the env starts from (at the budget), PRILoRA's and, on a real model, EVA's map
    (:mod:`rankgym.strategies.heuristics`, kept beside the store). Searches evaluate them first, so a
    search's best score is never behind them; none without a ``param_budget``.
    """
    from rankgym.registry import MODEL_FREE
    from rankgym.strategies.heuristics import cache_path, heuristic_maps, uniform_label

    if env.budget is None:
        return []
    maps = heuristic_maps(env.config, env.modules, env.budget, cache_path(env.config.store),
                          eva=env.config.evaluator not in MODEL_FREE,  # EVA probes a model these have not
                          make_room=env.evaluator.released)
    return [(uniform_label(env.initial), env.initial.tolist())] + [(label, [ranks[n] for n in env.names]) for label, ranks in maps]


def evaluate_starts(env, log: StepLog, progress: Progress, budget: int) -> int:
    """Evaluate :func:`heuristic_starts` (at most ``budget`` of them), labelled; how many were evaluated."""
    starts = heuristic_starts(env)[:budget]
    if starts:
        evaluate_batch(env, log, progress, [ranks for _, ranks in starts], [label for label, _ in starts])
    return len(starts)


def evaluate_ranks(env, log: StepLog, progress: Progress, ranks, label: str | None = None) -> dict[str, Any]:
    """Evaluate one proposed map (ranks in module order) through the env's store; log it."""
    return evaluate_batch(env, log, progress, [ranks], [label])[0]


def evaluate_batch(env, log: StepLog, progress: Progress, batch, labels: list[str | None] | None = None) -> list[dict[str, Any]]:
    """Evaluate several proposed maps at once (on a Ray pool, in parallel); logged in order, as one by one."""
    infos = env.evaluate_maps([dict(zip(env.names, (int(r) for r in ranks))) for ranks in batch])
    for info, evaluation, label in zip(infos, env.last_evaluations, labels or [None] * len(infos)):
        log.record("map", info, info["reward"], label, evaluation.cache_hit)
        progress("map", info, info["reward"])
    return infos


def strategy_budget(env) -> int:
    """The parameter budget a one-shot strategy aims at: the env's ``param_budget``, else the uniform map it starts from."""
    from rankgym.core import adapter_params

    return env.budget if env.budget is not None else adapter_params(env.modules, env.initial)


def task_model(args: "SearchArgs", agent: str, recipe: Recipe):
    """A fresh model of the search's backbone with the task's data (a finetune evaluator whose
    ``model`` has no adapters yet, ``train_set`` of ``recipe.train_examples`` from the training pool,
    ``val_set`` the score split): what a strategy that trains or probes a real model works on."""
    from rankgym.evaluators.factory import build_evaluator
    from rankgym.registry import MODEL_FREE, EnvConfig

    config = EnvConfig.for_env(args.env_id, args.env_kwargs)
    if config.evaluator in MODEL_FREE:
        raise ConfigError(f"the {agent} strategy works on a real model; {args.env_id} with the {config.evaluator} evaluator has none")
    config = replace(config, evaluator="finetune", store=None, ray_workers=0, train_examples=recipe.train_examples, lr=recipe.lr)
    return build_evaluator(config)


def one_shot(args: "SearchArgs", agent: str, recipe: Recipe, propose, needs_rank_1: str | None = None) -> dict[str, Any]:
    """A strategy that proposes one map from a real model (:func:`task_model`): ``propose(env, base)``
    returns its ranks by module name; the map is evaluated once, logged under ``agent``, and the
    search finished (promoted) like any other. ``needs_rank_1`` (why, e.g. "growth starts every
    module at rank 1") refuses a budget below uniform rank 1 before the model is loaded."""
    from rankgym.core import adapter_params

    started = time.time()
    args = replace(args, budget=1)  # one map, one evaluation
    run_dir, env, log, progress = open_search(args, agent)
    least, budget = adapter_params(env.modules, [1] * len(env.modules)), strategy_budget(env)
    if needs_rank_1 and least > budget:
        raise ConfigError(f"{needs_rank_1} ({least:,} parameters), over the budget of {budget:,}; raise --param-budget")
    with env.evaluator.released():  # one model in memory at a time: the proposal's, then the search's again
        base = task_model(args, agent, recipe)
        try:
            ranks = propose(env, base)
        finally:
            base.close()
    evaluate_ranks(env, log, progress, [ranks[n] for n in env.names], agent)
    return finish_search(run_dir, env, started, progress, args)


def finish_search(run_dir: RunDir, env, started: float, progress: Progress, args: "SearchArgs") -> dict[str, Any]:
    progress.close()
    pool = env.evaluator.utilisation() if hasattr(env.evaluator, "utilisation") else None
    env.close()  # frees the search's model before promotion loads its own
    return run_dir.finish(env.template, env.lam, started, promotion=args.promotion(), pool=pool)


@dataclass
class SearchArgs:
    """What every agent takes; each agent's ``Args`` adds its own fields."""

    env_id: str = "RankSearch-fake-v0"  # registered environment id
    budget: int = defaults.BUDGET  # evaluations to spend (environment steps or proposed maps)
    seed: int = 0  # seeds the agent and the environment
    out: str | None = None  # run folder (default runs/<env>__<agent>__<seed>__<time>)
    resume: bool = False  # continue the run in --out
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # gym.make overrides (--env KEY=VALUE)
    promote: int = defaults.PROMOTE  # distinct top maps retrained with the full recipe at the end (0: no promotion)
    promote_seeds: int = defaults.PROMOTE_SEEDS  # seeds of every promotion retrain
    promote_examples: int | None = None  # training examples of a promotion retrain (None: the task's full recipe)
    promote_halving: float = defaults.PROMOTE_HALVING  # a candidate this many seed spreads behind the leader after a seed stops (0: every seed)
    retry_failed: bool = False  # evaluate stored failures again (e.g. a transient out-of-memory) when resuming
    allow_divergence: bool = False  # a resumed run that differs from its log replaces the log from there on

    def env_kwargs_for_run(self, store: str) -> dict[str, Any]:
        """gym.make kwargs of this run: the user's, the evaluation store (``store``: the user's
        ``store`` kwarg where given, see :attr:`RunDir.evaluation_store`), seed, and the retry switch;
        with ``early_stop``, scoring stops against the ``promote``-th best map unless ``early_stop_top`` says otherwise."""
        kwargs = {**self.env_kwargs, "store": store, "seed": self.env_kwargs.get("seed", self.seed), "retry_failed": self.retry_failed}
        if kwargs.get("early_stop") is not None and "early_stop_top" not in kwargs:  # a map promotion will retrain is never stopped
            kwargs["early_stop_top"] = max(1, self.promote)
        return kwargs

    def config(self) -> dict[str, Any]:
        """What a run folder's config.json records of these arguments (resuming must not change it);
        an agent's own fields go under ``hyperparams``, which ``--resume`` hands back to it."""
        config = {"env_id": self.env_id, "seed": self.seed, "budget": self.budget, "env_kwargs": self.env_kwargs,
                  "promote": self.promote, "promote_seeds": self.promote_seeds, "promote_examples": self.promote_examples,
                  "promote_halving": self.promote_halving}
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in {g.name for g in fields(SearchArgs)}}
        return {**config, "hyperparams": own} if own else config

    def promotion(self) -> Promotion | None:
        return (Promotion(self.promote, self.promote_seeds, self.promote_examples, halving=self.promote_halving or None,
                          retry_failed=self.retry_failed) if self.promote > 0 else None)


def parse_cli(cls: type, description: str, argv: list[str] | None = None):
    """An ``Args`` dataclass from the command line: ``--field-name VALUE`` per field, ``--env`` and
    ``--set KEY=VALUE`` (repeatable) for the dict fields ``env_kwargs`` and ``hyperparams``."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    dict_flags = {"env_kwargs": "--env", "hyperparams": "--set"}
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if f.name in dict_flags:
            parser.add_argument(dict_flags[f.name], dest=f.name, action="append", default=[], metavar="KEY=VALUE")
        elif isinstance(default, bool):
            parser.add_argument("--" + f.name.replace("_", "-"), action="store_true")
        elif isinstance(default, list):
            parser.add_argument("--" + f.name.replace("_", "-"), nargs="*", default=default)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(default) if default is not None else str, default=default)
    values = vars(parser.parse_args(argv))
    for name in dict_flags:
        if name in values:
            values[name] = key_values(values[name])
    return cls(**values)


def key_values(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` options to a dict; values are Python literals when they parse as one (else strings)."""
    import ast

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out

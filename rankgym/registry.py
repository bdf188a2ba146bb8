"""The environment ids: ``RankSearch-{backbone}-{task}-v0``, the fake ones and the surrogate.

Registration is cheap (entry points are strings) and idempotent. Every kwarg below can be
overridden at ``gym.make``; unknown or bad ones fail at construction with a clear message.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import gymnasium as gym

from rankgym.backbones import BACKBONES
from rankgym.errors import ConfigError
from rankgym.recipe import ALPHA_POLICY, Recipe
from rankgym.tasks import TASKS

ENTRY_POINT = "rankgym.registry:make_rank_search_env"
VECTOR_ENTRY_POINT = "rankgym.registry:make_rank_search_vector_env"
EVALUATORS = ("finetune", "warmstart", "batched", "elastic", "fake", "replay", "surrogate")
MODEL_FREE = ("fake", "surrogate", "replay")  # the evaluators with no model to train or probe


@dataclass
class EnvConfig:
    """Everything a registered environment is built from (all JSON-serialisable).

    Environment: ``lam``, ``param_budget``, ``rank_step``, ``min_rank``, ``max_rank``, ``initial_rank``,
    ``initial_map``, ``max_episode_steps``, ``target_score``, ``reward``, ``groups``, ``store``,
    ``failure_penalty``, ``retry_failed`` (see :class:`~rankgym.envs.rank_search.RankSearchEnv`).
    Evaluator: ``evaluator`` (finetune, warmstart, fake, replay), ``backbone``, ``task``,
    ``device``, ``seed``, training budget (``train_examples``, ``batch_size``, ``lr``,
    ``max_grad_norm``, ``val_examples``, ``warm_examples``), the alpha policy (``alpha``,
    ``alpha_mode``, ``rslora``), ``score_examples`` (size of the score split held out of the
    training file), ``elastic_examples``, ``sandwich``, ``elastic_draws`` and ``elastic_groups`` for the elastic evaluator (its one
    training run, at the full recipe's learning rate; under a ``param_budget`` it trains on draws projected onto
    the budget, ``elastic_draws='grid'`` on the grid's draws alone; ``elastic_groups`` is the share of draws that
    also turn whole module kinds or blocks off; ``early_stop`` (a confidence), ``early_stop_chunks`` and ``early_stop_top`` stop a
    map's scoring once it cannot reach the ``early_stop_top``-th best map; it saves the trained adapter in ``<store folder>/elastic/``), local copies (``model_name_or_path``, ``data_dir``), ``fake_layers``,
    ``fake_hidden``, ``fake_profile`` (separable or calibrated), ``fake_noise`` and ``fake_collapse`` for the fake evaluator, ``surrogate_table`` for the surrogate evaluator (default: the
    table rankgym ships for the task, :data:`SURROGATES`), ``target_modules`` (PEFT-style names or regexes to
    adapt), ``dtype`` (the frozen base's: fp32, bf16, fp16) and ``metric`` (what scores a map, instead of
    the task's own: accuracy, matthews, f1; pearson, spearman; neg_nll, exact_match), ``gradient_checkpointing``, ``pruner`` (with ``pruner_rungs`` and ``pruner_examples``: the
    finetune evaluator's training stopped part-way by an Optuna pruner). ``RankSearch-auto-{task}-v0`` adapts
    the model at ``model_name_or_path``, its family read from its config.
    """

    backbone: str = "fake"
    task: str = "fake"
    evaluator: str = "fake"
    device: str = "auto"
    seed: int = 0
    train_examples: int = 1024
    batch_size: int = 32
    lr: float = 3e-3  # a step's budget is short (1,024 examples: 32 steps); the full recipe uses Recipe.lr = 1e-3
    max_grad_norm: float | None = Recipe.max_grad_norm
    val_examples: int | None = None
    warm_examples: int | None = None
    alpha: float = ALPHA_POLICY["alpha"]
    alpha_mode: str = ALPHA_POLICY["alpha_mode"]
    rslora: bool = ALPHA_POLICY["rslora"]
    score_examples: int | None = None
    elastic_examples: int = 16384
    sandwich: bool = True
    elastic_draws: str | None = None  # "budget": the adapter's draws projected onto param_budget; "grid": not; None: budget under a budget
    elastic_groups: float = 0.0  # share of the adapter's draws that also turn whole kinds or blocks off (ElasticEvaluator.group_draws)
    early_stop: float | None = None  # e.g. 0.95: elastic scoring stops once a map cannot reach the reference at that confidence
    early_stop_chunks: int = 4
    early_stop_top: int = 1
    pruner: str | None = None  # the finetune evaluator's multi-fidelity: sha, hyperband or median (rankgym.evaluators.pruning)
    pruner_rungs: int = 4
    pruner_examples: int = 256
    model_name_or_path: str | None = None
    target_modules: list[str] | None = None
    dtype: str = "fp32"
    metric: str | None = None  # the task's own metric unless named (rankgym.metrics.BY_KIND)
    gradient_checkpointing: bool = False  # less memory for a third more compute, the same numbers
    data_dir: str | None = None
    surrogate_table: str | None = None
    ray_workers: int = 0  # > 0: evaluations run on this many Ray actors (rankgym.ray_pool)
    ray_address: str | None = None  # "auto" joins a running cluster; None starts a local one
    worker_cpus: int = 1
    fake_layers: int = 4
    fake_hidden: int = 256
    fake_profile: str = "separable"
    fake_noise: float | None = None  # None: the profile's
    fake_collapse: float | None = None
    lam: float | None = None  # 0.5, or 0 with a param_budget
    param_budget: float | None = None
    rank_step: int = 2
    min_rank: int = 0
    max_rank: int = 16
    initial_rank: int = 8
    initial_map: dict[str, int] | None = None
    max_episode_steps: int | None = 16
    target_score: float | None = None
    reward: str = "score"
    groups: str = "module"
    store: str | None = None
    failure_penalty: float = -1.0
    retry_failed: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], env_id: str = "RankSearch") -> "EnvConfig":
        names = [f.name for f in fields(cls)]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, names, n=1)) else "") for k in unknown]
            raise ConfigError(f"unknown option {', '.join(hints)} for {env_id}; options are: {', '.join(names)}")
        hints, defaults = typing.get_type_hints(cls), {f.name: f.default for f in fields(cls)}
        for key, value in kwargs.items():
            if not _has_type(value, hints[key]):
                default = defaults[key]
                example = f", e.g. {key}={default!r} (its default)" if default is not None else ""
                raise ConfigError(f"option {key}={value!r} for {env_id} should be {_type_name(hints[key])}{example}")
        config = cls(**kwargs)
        if config.evaluator not in EVALUATORS:
            raise ConfigError(f"evaluator must be one of {', '.join(EVALUATORS)}, got {config.evaluator!r}")
        for name in ("train_examples", "batch_size"):
            if getattr(config, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
        if config.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {config.lr}")
        if config.alpha_mode not in ("fixed", "ratio"):
            raise ConfigError(f"alpha_mode must be 'fixed' (scale alpha / r) or 'ratio' (scale alpha at every rank), got {config.alpha_mode!r}")
        if config.elastic_draws not in (None, "grid", "budget"):
            raise ConfigError(f"elastic_draws must be 'grid' (every module draws from the rank grid) or 'budget' (the draws projected "
                              f"onto param_budget), got {config.elastic_draws!r}")
        if config.elastic_draws == "budget" and config.param_budget is None:
            raise ConfigError("elastic_draws='budget' projects the elastic adapter's draws onto param_budget: pass a param_budget too")
        if config.early_stop is not None and config.evaluator != "elastic":
            raise ConfigError(f"early_stop stops the elastic evaluator's scoring; the {config.evaluator} evaluator does not stop early: "
                              "add evaluator='elastic' or leave early_stop unset")
        if config.pruner is not None and config.evaluator != "finetune":
            raise ConfigError(f"pruner stops the finetune evaluator's training part-way; the {config.evaluator} evaluator does not "
                              "train per map that way: add evaluator='finetune' or leave pruner unset")
        if config.fake_profile not in ("separable", "calibrated"):
            raise ConfigError(f"fake_profile must be 'separable' or 'calibrated' (fitted to real MiniLM x SST-2 scores), got {config.fake_profile!r}")
        return config

    @classmethod
    def for_env(cls, env_id: str, overrides: dict[str, Any]) -> "EnvConfig":
        """The config of ``env_id``: its registered kwargs (where it is registered) under ``overrides``, validated."""
        registered = {k: v for k, v in gym.spec(env_id).kwargs.items() if k != "env_id"} if env_id in gym.registry else {}
        return cls.from_kwargs({**registered, **overrides}, env_id)

    @property
    def draw_budget(self) -> float | int | None:
        """The budget the elastic adapter's training draws are projected onto (None: the grid's draws).
        Budget draws are the default under a budget: on MiniLM x CoLA and x MRPC at 5 % of uniform
        rank 8 they scored the free heuristics as full retrains order them, where grid draws put EVA's
        map 15 points too low (docs/elastic.md)."""
        return None if self.elastic_draws == "grid" else self.param_budget  # 'budget' is refused without one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits an EnvConfig annotation (an int is a float; a bool is no number)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "None"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return {"int": "a whole number", "float": "a number", "bool": "True or False", "str": "a string"}.get(hint.__name__, hint.__name__)


# Per-backbone defaults: a step's training budget and the episode, sized for the hardware each suits.
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": dict(train_examples=256, val_examples=256, max_rank=8, initial_rank=4, max_episode_steps=8),
    "minilm": dict(train_examples=1024, max_rank=16, initial_rank=8, max_episode_steps=16),
    "gpt2": dict(train_examples=2048, max_rank=16, initial_rank=8, max_episode_steps=16),
    "distilgpt2": dict(train_examples=2048, max_rank=16, initial_rank=8, max_episode_steps=16),
    "auto": dict(train_examples=1024, max_rank=16, initial_rank=8, max_episode_steps=16),
}
FAKE_ID = "RankSearch-fake-v0"
CALIBRATED_ID = "RankSearch-fake-calibrated-v0"  # MiniLM's shape, fitted to real MiniLM x SST-2 scores
SURROGATE_ID = "RankSearch-minilm-sst2-surrogate-v0"  # the first shipped table: real MiniLM x SST-2 elastic scores
# The shipped real-score tables (rankgym/data/surrogate-minilm-{task}-elastic.json, written by
# benchmarks/score_tables.py), each with the env defaults of the maps it recorded: a table recorded
# within a budget covers that budget only (its env id defaults to it, on the grid it was scored on).
SURROGATES: dict[str, dict[str, Any]] = {
    "sst2": {},  # 1,000 random maps of ranks 0..16 in steps of 2, no budget
    "cola": dict(param_budget=16588, rank_step=1),  # 5 % of uniform rank 8, where CoLA's headroom is largest: 501 maps
    "mrpc": dict(param_budget=16588, rank_step=1),  # 5 % as well (headroom 2.2 points there, 1.5 at 12.5 %), budget draws: 501 maps
    "stsb": dict(param_budget=16588, rank_step=1),  # 5 %, budget draws: 501 maps
}


def env_ids() -> dict[str, dict[str, Any]]:
    """Every registered id with its default kwargs."""
    ids = {FAKE_ID: dict(backbone="fake", task="fake", evaluator="fake"),
           CALIBRATED_ID: dict(backbone="fake", task="fake", evaluator="fake", fake_profile="calibrated", fake_layers=6, fake_hidden=384),
           **{f"RankSearch-minilm-{task}-surrogate-v0": dict(backbone="minilm", task=task, evaluator="surrogate", max_rank=16,
                                                             initial_rank=8, max_episode_steps=16, **defaults)
              for task, defaults in SURROGATES.items()}}
    for backbone in (*BACKBONES, "auto"):
        for task in TASKS:
            ids[f"RankSearch-{backbone}-{task}-v0"] = dict(backbone=backbone, task=task, evaluator="finetune",
                                                          **BACKBONE_DEFAULTS[backbone])
    for folder in filter(None, os.environ.get(TASKS_ENV, "").split(os.pathsep)):
        try:
            ids.update(task_env_ids(folder))
        except ConfigError as err:  # importing rankgym must not fail on a stale shell variable
            warnings.warn(str(err), stacklevel=2)
    return ids


TASKS_ENV = "RANKGYM_TASKS"  # task folders whose ids register on import, separated like PATH


def task_env_ids(folder: str | Path, name: str | None = None) -> dict[str, dict[str, Any]]:
    """``RankSearch-{backbone}-{name}-v0`` for a task folder (TSV/CSV, or JSON Lines for a causal LM), every backbone."""
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"task folder {folder} does not exist (from ${TASKS_ENV} or register_task)")
    name = name or path.name
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"task name {name!r} may hold letters, digits, '_', '-' and '.' only; pass name= to register_task")
    return {f"RankSearch-{backbone}-{name}-v0": dict(backbone=backbone, task=str(path), evaluator="finetune", **BACKBONE_DEFAULTS[backbone])
            for backbone in (*BACKBONES, "auto")}


def register_task(folder: str | Path, name: str | None = None) -> list[str]:
    """Register the env ids of a task folder (named after it, or ``name``) and return them; in a shell,
    ``$RANKGYM_TASKS`` does the same for ``rankgym search`` and a resumed run."""
    ids = task_env_ids(folder, name)
    for env_id, kwargs in ids.items():
        if env_id in gym.registry and gym.spec(env_id).kwargs.get("task") != kwargs["task"]:
            raise ConfigError(f"{env_id} is already registered for {gym.spec(env_id).kwargs.get('task')}; pass another name=")
    _register(ids)
    return list(ids)


def _register(ids: dict[str, dict[str, Any]]) -> None:
    for env_id, kwargs in ids.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs=dict(kwargs, env_id=env_id))


def register_envs() -> None:
    _register(env_ids())


def build_evaluator(config: EnvConfig, k: int = 1):
    """The evaluator of ``config``: on ``config.ray_workers`` Ray actors, each building its own with
    :func:`rankgym.evaluators.factory.build_evaluator`, or here."""
    from rankgym.evaluators.factory import build_evaluator as build_here

    if config.ray_workers > 0:
        from functools import partial

        from rankgym.ray_pool import RayEvaluator

        return RayEvaluator(partial(build_here, replace(config, ray_workers=0)), config.ray_workers, config.ray_address,
                            config.worker_cpus, evaluator=config.evaluator, device=config.device)
    return build_here(config, k)


def make_rank_search_env(env_id: str = "RankSearch", **kwargs: Any):
    """Entry point of every registered id: validate kwargs, build the evaluator, then the env."""
    config = EnvConfig.from_kwargs(kwargs, env_id)
    return build_env(config, build_evaluator(config))


def make_batched_episodes(num_envs: int, env_id: str = "RankSearch", on_evaluation=None, **kwargs: Any):
    """``num_envs`` environments on one evaluator; ``finetune`` becomes ``batched`` with k = num_envs."""
    from rankgym.envs.vector import BatchedEpisodes

    config = EnvConfig.for_env(env_id, kwargs)  # the id's own defaults (backbone, task, budget) under the caller's overrides
    if config.evaluator == "finetune" and not config.ray_workers:  # on Ray each worker trains its own maps
        config.evaluator = "batched"
    if config.evaluator in ("warmstart", "replay"):
        raise ConfigError(f"the {config.evaluator} evaluator cannot be shared by vector environments; use finetune or fake")
    evaluator = build_evaluator(config, k=num_envs)
    first = build_env(config, evaluator)
    envs = [first] + [build_env(config, evaluator, store=first.store) for _ in range(num_envs - 1)]
    return BatchedEpisodes(envs, on_evaluation)


def make_rank_search_vector_env(num_envs: int = 1, env_id: str = "RankSearch", **kwargs: Any):
    """Vector entry point (``gym.make_vec(id, num_envs=K)``): K envs evaluated in one batched fine-tune."""
    from rankgym.envs.vector import RankSearchVectorEnv

    kwargs.pop("render_mode", None)
    return RankSearchVectorEnv(make_batched_episodes(num_envs, env_id, **kwargs))


def build_env(config: EnvConfig, evaluator, store=None):
    """The environment of ``config`` on an evaluator already built (one evaluator can serve several envs)."""
    from rankgym.envs.rank_search import RankSearchEnv

    env = RankSearchEnv(
        evaluator,
        lam=config.lam,
        param_budget=config.param_budget,
        rank_step=config.rank_step,
        min_rank=config.min_rank,
        max_rank=config.max_rank,
        initial_rank=config.initial_rank,
        initial_map=config.initial_map,
        max_episode_steps=config.max_episode_steps,
        target_score=config.target_score,
        reward=config.reward,
        groups=config.groups,
        store=store or (config.store if config.evaluator != "replay" else evaluator.store),
        failure_penalty=config.failure_penalty,
        retry_failed=config.retry_failed,
    )
    env.config = config
    return env

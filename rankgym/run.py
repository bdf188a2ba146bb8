"""A search's run folder: resolved config, evaluation store, step log, best map, exports, summary.

Resuming re-executes the agent from the start with the same seed. Every evaluation the killed run
finished is answered by the store (no training; the warm start trains the unfinished episode's
finished steps again, to rebuild the adapters it carries), and rows already in the step log are not written
again, so the resumed run reaches exactly the state an uninterrupted run would have, with a step
log that has no gaps and no repeats.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
from tqdm.auto import tqdm

from rankgym import defaults
from rankgym.errors import ConfigError, FileError
from rankgym.files import read_json, require
from rankgym.promotion import Promotion, promote, promoted_map
from rankgym.rankmap import RankMap
from rankgym.recipe import Recipe

STEPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY AUTOINCREMENT,
    worker INTEGER NOT NULL,
    idx INTEGER NOT NULL,          -- the worker's own count, which resuming replays
    kind TEXT NOT NULL,            -- reset, step or map
    label TEXT,                    -- a baseline's name
    metric REAL, params INTEGER, cost REAL, reward REAL, score REAL, seconds REAL,
    cache_hit INTEGER, error TEXT, rank_map TEXT, created REAL,
    UNIQUE (worker, idx)
);
"""
CSV_COLUMNS = ("step", "kind", "label", "metric", "params", "cost", "reward", "score", "seconds", "cache_hit", "error", "worker", "rank_map")


class ResumeDiverged(ConfigError):
    """A resumed run evaluated something other than what the killed run logged."""


class StepLog:
    """The rows of ``steps.csv``, kept in the run's SQLite file so several workers can append.

    Args:
        path: the run's SQLite file.
        worker: whose rows these are.
        allow_divergence: when a resumed run replays a row that differs from the logged one, drop
            the logged rows from there on and log the new ones (a new branch) instead of stopping.
    """

    def __init__(self, path: str | Path, worker: int = 0, allow_divergence: bool = False) -> None:
        self.db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(STEPS_SCHEMA)
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise FileError(f"{path}: not a rankgym run store ({err}); is the run folder intact?") from None
        self.worker, self.allow_divergence = worker, allow_divergence
        self.idx = 0
        self.logged = self.db.execute("SELECT COUNT(*) FROM steps WHERE worker = ?", (worker,)).fetchone()[0]

    def record(self, kind: str, info: dict[str, Any], reward: float, label: str | None = None, cache_hit: bool = False) -> bool:
        """Append one evaluation; returns False when resuming replays a row that is already logged.

        A replayed row must match the logged one (kind, map and metric); on the first mismatch this
        raises :class:`ResumeDiverged` naming the step, or starts a new branch (``allow_divergence``).
        """
        self.idx += 1
        rank_map = json.dumps(info["rank_map"], separators=(",", ":"))
        if self.idx <= self.logged:
            step, logged_kind, logged_map, logged_metric = self.db.execute(
                "SELECT step, kind, rank_map, metric FROM steps WHERE worker = ? AND idx = ?", (self.worker, self.idx)).fetchone()
            if (logged_kind, json.loads(logged_map), logged_metric) == (kind, info["rank_map"], _finite(info["metric"])):
                return False
            if not self.allow_divergence:
                raise ResumeDiverged(
                    f"the resumed run diverges from the logged one at step {step} (worker {self.worker}): it logged metric "
                    f"{logged_metric} for its map, the resumed run got {info['metric']} for {'the same' if json.loads(logged_map) == info['rank_map'] else 'another'} map; "
                    "resume with --allow-divergence to replace the log from that step on")
            self.db.execute("DELETE FROM steps WHERE worker = ? AND idx >= ?", (self.worker, self.idx))
            self.logged = self.idx - 1
        self.db.execute(
            "INSERT OR IGNORE INTO steps (worker, idx, kind, label, metric, params, cost, reward, score, seconds, cache_hit,"
            " error, rank_map, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.worker, self.idx, kind, label, _finite(info["metric"]), info["params"], info["cost"], reward,
             _finite(info["score"]), info["seconds"], int(cache_hit), info["error"], rank_map, time.time()),
        )
        return True

    def rows(self) -> list[dict[str, Any]]:
        cursor = self.db.execute(f"SELECT {', '.join(CSV_COLUMNS)} FROM steps ORDER BY step")
        return [dict(zip(CSV_COLUMNS, row)) for row in cursor]

    def count(self, kinds: tuple[str, ...] = ("step", "map")) -> int:
        marks = ",".join("?" * len(kinds))
        return self.db.execute(f"SELECT COUNT(*) FROM steps WHERE kind IN ({marks})", kinds).fetchone()[0]


def _uniform_rank(row: dict[str, Any] | None) -> int | None:
    ranks = set(json.loads(row["rank_map"]).values()) if row else set()
    return ranks.pop() if len(ranks) == 1 else None


def _finite(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class RecordEvaluations(gym.Wrapper):
    """Write every evaluation the environment makes (reset and step) to the run's step log."""

    def __init__(self, env: gym.Env, log_path: str | Path, worker: int = 0, on_record=None, allow_divergence: bool = False) -> None:
        super().__init__(env)
        self.log = StepLog(log_path, worker, allow_divergence)
        self.on_record = on_record

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._record("reset", info, info["score"] if info["error"] is None else float("nan"))
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._record("step", info, reward)
        return obs, reward, terminated, truncated, info

    def _record(self, kind: str, info: dict[str, Any], reward: float) -> None:
        self.log.record(kind, info, reward, cache_hit=self.env.unwrapped.last_evaluation.cache_hit)
        if self.on_record:
            self.on_record(kind, info, reward)


class Progress:
    """A bar over the budget: evaluations done, best reward so far, ETA; and once the first
    ``MEASURED`` evaluations are done, one line with the duration they predict on this machine
    (machines differ threefold and more: a README's times are another machine's)."""

    MEASURED = 3

    def __init__(self, budget: int, desc: str) -> None:
        self.bar = tqdm(total=budget, desc=desc, unit="eval", dynamic_ncols=True)
        self.best = -math.inf
        self.budget, self.done, self.started = budget, 0, time.perf_counter()

    def __call__(self, kind: str, info: dict[str, Any], reward: float) -> None:
        if kind == "reset":
            return
        if info["error"] is None and info["score"] > self.best:
            self.best = info["score"]
            self.bar.set_postfix(best_reward=f"{self.best:.4f}", metric=f"{info['metric']:.4f}")
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


class RunDir:
    """One search's folder.

    Args:
        path: the folder (created).
        config: the resolved configuration (written to ``config.json``).
        resume: continue the run already in ``path``; its config must describe the same search.
    """

    def __init__(self, path: str | Path, config: dict[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        config_file = self.path / "config.json"
        if resume:
            saved = load_config(self.path)
            if any(saved.get(k) != v for k, v in config.items() if k not in ("resume", "out")):
                changed = sorted(k for k, v in config.items() if k not in ("resume", "out") and saved.get(k) != v)
                raise ConfigError(f"cannot resume {self.path}: {', '.join(changed)} differ from the run's config.json; resume without changing them")
        elif config_file.exists():
            raise ConfigError(f"{self.path} already holds a run; pass --resume {self.path} to continue it, or another --out")
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.config, self.resume = config, resume
        self._lock = self._take_lock()

    def _take_lock(self):
        """One search per folder: an exclusive lock on ``run.lock`` for this process's lifetime (or
        until :meth:`release`); a second process is refused, naming the holder's pid. The holding
        process itself may open the folder again (a resume in the same Python session)."""
        import fcntl
        import os

        handle = (self.path / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if holder == str(os.getpid()):
                return None
            raise ConfigError(f"another search (pid {holder}) is running in {self.path}; wait for it to end, or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def release(self) -> None:
        """Let another process use the folder (the search is over)."""
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    @contextmanager
    def opening(self):
        """Build the search's environments inside: ``config.json`` is written once they stand, and a
        refused start (a bad option, a missing model) leaves no run behind, so the corrected command
        can use the same folder."""
        try:
            yield
        except BaseException:
            self.release()
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        if not self.resume:
            (self.path / "config.json").write_text(json.dumps(self.config, indent=2, default=str) + "\n")

    @property
    def store_path(self) -> Path:
        """The run's own store: its step log, and its evaluations unless ``--env store=PATH`` shares another."""
        return self.path / "store.sqlite"

    @property
    def evaluation_store(self) -> Path:
        """Where evaluations go: ``--env store=PATH`` (one store shared by runs, to reuse their
        evaluations and elastic adapters), else the run's own store."""
        shared = self.config.get("env_kwargs", {}).get("store")
        return Path(shared) if shared else self.store_path

    @property
    def adapter_path(self) -> Path:
        """The promoted winner's trained adapter (its seed-0 retrain), a folder PEFT loads."""
        return self.path / "peft_adapter"

    def log(self, worker: int = 0, allow_divergence: bool = False) -> StepLog:
        return StepLog(self.store_path, worker, allow_divergence)

    def finish(self, template: RankMap, lam: float, started: float, promotion: Promotion | None = None,
               pool: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write steps.csv, promote the top maps, then the answer (rankgym JSON and PEFT config) and summary.json.

        ``template`` carries the environment's modules and alpha policy. The answer is the promoted winner where
        the search was promoted (see :mod:`rankgym.promotion`), else the best search score.
        """
        rows = self.log().rows()
        with (self.path / "steps.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        scored = [r for r in rows if r["error"] is None and r["score"] is not None]
        if not scored:
            raise ConfigError(f"no evaluation in {self.path} succeeded; see steps.csv for the errors")
        best = max(scored, key=lambda r: r["score"])
        table = (promote(rows, self.config["env_id"], self.config.get("env_kwargs", {}), self.evaluation_store, promotion,
                         adapter_dir=self.adapter_path) if promotion else None)
        answer = (table and promoted_map(template, table)) or template.replace(json.loads(best["rank_map"]))
        answer.provenance.update(agent=self.config["agent"], lam=lam, run=str(self.path))
        if table is None:
            answer.provenance.update(metric=best["metric"], params=best["params"], score=best["score"])
        answer.save(self.path / "best_rank_map.json")
        if any(answer.ranks.values()):
            answer.to_peft_config(task_type="SEQ_CLS").save_pretrained(str(self.path))
        steps = [r for r in rows if r["kind"] != "reset"]
        start = next((r for r in rows if r["kind"] == "reset" and r["error"] is None), None)
        summary = {
            "run": str(self.path),
            "env_id": self.config.get("env_id"),
            "agent": self.config["agent"],
            "seed": self.config.get("seed"),
            "best_reward": best["score"],
            "best_metric": best["metric"],
            "best_params": best["params"],
            "best_cost": best["cost"],
            "evaluations": len(steps),
            "trained": sum(1 for r in rows if not r["cache_hit"]),
            "cache_hits": sum(1 for r in rows if r["cache_hit"]),
            "failures": sum(1 for r in rows if r["error"]),
            "seconds": round(time.time() - started, 2),
            "evaluation_seconds": round(sum(r["seconds"] or 0 for r in rows if not r["cache_hit"]), 2),
            # the map every episode starts from (uniform by default), for comparison
            "initial_reward": start and start["score"],
            "initial_metric": start and start["metric"],
            "initial_params": start and start["params"],
            "initial_uniform_rank": _uniform_rank(start),
            "promotion": table,
            "adapter": str(self.adapter_path) if self.adapter_path.is_dir() else None,
            "headroom": read_json(self.path / HEADROOM_FILE) if (self.path / HEADROOM_FILE).is_file() else None,
            "pool": pool,  # a Ray search's evaluations per worker and utilisation
        }
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.release()
        return summary


HEADROOM_FILE = "headroom.json"
LOCK_FILE = "run.lock"
CONFIG_FIELDS = {"env_id": str, "agent": str, "budget": int, "seed": int, "env_kwargs": dict}


def load_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the run folder ``path``, checked field by field."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} holds no config.json: is it a run folder written by `rankgym search`?")
    config = require(read_json(config_file, "a run's config.json"), config_file, CONFIG_FIELDS, "a run's config.json")
    optional = {"hyperparams": dict, "n_envs": int, "devices": list, "promote": int, "promote_seeds": int,
                "promote_examples": (int, type(None)), "promote_halving": (int, float)}
    require(config, config_file, {k: v for k, v in optional.items() if k in config}, "a run's config.json")
    return config


def run_folder(*parts: object) -> Path:
    """The default output folder of a command: runs/<part>__<part>__...__<time>."""
    return Path("runs") / "__".join([*map(str, parts), time.strftime("%Y%m%d-%H%M%S")])



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
    from rankgym.strategies.heuristics import cache_path, heuristic_maps, uniform_label

    if env.budget is None:
        return []
    maps = heuristic_maps(env.config, env.modules, env.budget, cache_path(env.config.store),
                          eva=env.config.evaluator != "fake")  # the fake envs have no model to probe
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
    from rankgym.registry import EnvConfig

    kwargs = {**(gym.spec(args.env_id).kwargs or {}), **args.env_kwargs}
    kwargs.pop("env_id", None)
    config = EnvConfig.from_kwargs(kwargs, args.env_id)
    if config.evaluator in ("fake", "surrogate", "replay"):
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
    base = task_model(args, agent, recipe)
    ranks = propose(env, base)
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
        ``store`` kwarg where given, see :attr:`RunDir.evaluation_store`), seed, and the retry switch."""
        return {**self.env_kwargs, "store": store, "seed": self.env_kwargs.get("seed", self.seed), "retry_failed": self.retry_failed}

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

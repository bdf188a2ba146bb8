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
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rankgym.errors import ConfigError
from rankgym.files import read_json, require
from rankgym.promotion import Promotion, promote, promoted_map
from rankgym.rankmap import RankMap
from rankgym.steplog import CSV_COLUMNS, StepLog


def _uniform_rank(row: dict[str, Any] | None) -> int | None:
    ranks = set(json.loads(row["rank_map"]).values()) if row else set()
    return ranks.pop() if len(ranks) == 1 else None


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
            answer.to_peft_config().save_pretrained(str(self.path))
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

"""The step log of a search: every evaluation its agent made, in order, kept in the run's SQLite
file (several workers append), written out as ``steps.csv``, and replayed by a resumed run, which
writes only the rows past the log's end (see :mod:`rankgym.run`)."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from rankgym.errors import ConfigError, FileError


STEPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY AUTOINCREMENT,
    worker INTEGER NOT NULL,
    idx INTEGER NOT NULL,          -- the worker's own count, which resuming replays
    kind TEXT NOT NULL,            -- reset, step or map
    label TEXT,                    -- a baseline's name
    metric REAL, params INTEGER, cost REAL, reward REAL, score REAL, seconds REAL,
    cache_hit INTEGER, error TEXT, rank_map TEXT, created REAL,
    fraction REAL,                 -- share of the split read where scoring stopped early (metric: an estimate); NULL: all of it
    UNIQUE (worker, idx)
);
"""
CSV_COLUMNS = ("step", "kind", "label", "metric", "params", "cost", "reward", "score", "seconds", "cache_hit", "error", "worker",
               "rank_map", "fraction")


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
            if "fraction" not in [row[1] for row in self.db.execute("PRAGMA table_info(steps)")]:  # a run logged before early stopping
                self.db.execute("ALTER TABLE steps ADD COLUMN fraction REAL")
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
            " error, rank_map, created, fraction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.worker, self.idx, kind, label, _finite(info["metric"]), info["params"], info["cost"], reward,
             _finite(info["score"]), info["seconds"], int(cache_hit), info["error"], rank_map, time.time(),
             info["fraction"] if info.get("fraction", 1.0) < 1.0 else None),
        )
        return True

    def rows(self) -> list[dict[str, Any]]:
        cursor = self.db.execute(f"SELECT {', '.join(CSV_COLUMNS)} FROM steps ORDER BY step")
        return [dict(zip(CSV_COLUMNS, row)) for row in cursor]

    def count(self, kinds: tuple[str, ...] = ("step", "map")) -> int:
        marks = ",".join("?" * len(kinds))
        return self.db.execute(f"SELECT COUNT(*) FROM steps WHERE kind IN ({marks})", kinds).fetchone()[0]


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

"""The evaluation store: every evaluation, written as soon as it finishes, and reused when repeated.

SQLite in WAL mode, so several processes (vector-env workers, parallel searches) can share one
file: writes are single INSERT OR IGNORE statements keyed by a hash of what decides the result
(the evaluator's identity and the canonical rank map). The first result written for a key is the
result: a process that computed the same map concurrently gets the stored one back from
:meth:`EvaluationStore.put` and acts on it. Failures are stored too (their own table), so a resumed
search meets the same failure instead of a different result, unless it asks to retry them.
Scores stopped early (:attr:`~rankgym.core.Evaluation.stopped`: an estimate, not a score) have their own
table as well: only a caller that stops early itself is answered from it, :meth:`evaluations` (what
surrogate tables, replays and reports read) never lists them, and a full score replaces one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rankgym.errors import FileError
from rankgym.core import Evaluation, ModuleInfo
from rankgym.rankmap import RankMap

# The schema's version, kept in SQLite's user_version. A file no rankgym had versioned reads 0; its
# tables are accepted when their columns are these. Any other schema is refused, never misread.
SCHEMA_VERSION = 2  # 2: the stopped table (a version-1 file gains it when opened)
SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    context TEXT PRIMARY KEY,      -- hash of the identity
    identity TEXT NOT NULL,        -- JSON: backbone, revision, task, evaluator, budget, seed, version
    modules TEXT NOT NULL          -- JSON list of ModuleInfo, so a replay needs no model
);
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY,          -- hash of context + canonical rank map
    context TEXT NOT NULL,
    rank_map TEXT NOT NULL,        -- canonical JSON (RankMap.key())
    metric REAL NOT NULL,
    params INTEGER NOT NULL,
    seconds REAL NOT NULL,
    val_loss REAL,
    train_loss REAL,
    device TEXT,
    created REAL NOT NULL          -- unix time stamp
);
CREATE INDEX IF NOT EXISTS evaluations_context ON evaluations (context);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,          -- as in evaluations; a later success removes the failure
    context TEXT NOT NULL,
    rank_map TEXT NOT NULL,
    error TEXT NOT NULL,
    params INTEGER NOT NULL,
    seconds REAL NOT NULL,
    device TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stopped (
    key TEXT PRIMARY KEY,          -- as in evaluations; a later full score removes it
    context TEXT NOT NULL,
    rank_map TEXT NOT NULL,
    value REAL NOT NULL,           -- what the agent was given: an estimate from the part done
    fraction REAL NOT NULL,        -- share of the split read before stopping
    params INTEGER NOT NULL,
    seconds REAL NOT NULL,
    device TEXT,
    created REAL NOT NULL
);
"""


def _schema_columns() -> dict[str, list[str]]:
    """Each table of :data:`SCHEMA` and its columns, as a fresh in-memory database lays them out."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: [row[1] for row in db.execute(f"PRAGMA table_info({t})")] for t in tables}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def context_of(identity: dict[str, Any]) -> str:
    return _hash(identity)


def _key(context: str, rank_map: RankMap, state_key: str = "") -> str:
    return _hash([context, rank_map.key()] + ([state_key] if state_key else []))


class EvaluationStore:
    """A SQLite file of evaluations (``":memory:"`` for a process-local cache).

    Args:
        path: the database file; created with its folder if missing.
        timeout: seconds a writer waits for another process's lock.
    """

    def __init__(self, path: str | Path = ":memory:", timeout: float = 60.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
            self._check_schema()
            self.db.executescript(SCHEMA)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("SELECT COUNT(*) FROM contexts").fetchone()
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise FileError(f"{self.path}: not a rankgym evaluation store ({err}); move it away to start a new one") from None
        except FileError:
            self.db.close()
            raise

    def _check_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FileError(f"{self.path}: an evaluation store of schema version {version}, written by a newer rankgym "
                            f"(this one reads version {SCHEMA_VERSION}); upgrade rankgym, or use another store")
        for table, columns in _schema_columns().items():
            found = [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]
            if found and found != columns:
                raise FileError(f"{self.path}: its {table} table has columns {', '.join(found)}, not rankgym's "
                                f"{', '.join(columns)} (schema version {version}); move it away to start a new store")

    def register(self, identity: dict[str, Any], modules: list[ModuleInfo]) -> str:
        """Record an evaluator's identity and modules; returns its context hash."""
        context = context_of(identity)
        payload = [dict(m.__dict__, spectrum=list(m.spectrum)) for m in modules]
        self.db.execute(
            "INSERT OR IGNORE INTO contexts (context, identity, modules) VALUES (?, ?, ?)",
            (context, json.dumps(identity, sort_keys=True), json.dumps(payload)),
        )
        return context

    def get(self, context: str, rank_map: RankMap, failures: bool = True, state_key: str = "",
            stopped: bool = False) -> Evaluation | None:
        """The stored evaluation of ``rank_map`` (``cache_hit=True``), a stored failure unless
        ``failures=False``, a score stopped early where ``stopped=True``, or None."""
        key = _key(context, rank_map, state_key)
        row = self.db.execute(
            "SELECT metric, params, seconds, val_loss, train_loss, device FROM evaluations WHERE key = ?", (key,)
        ).fetchone()
        if row is not None:
            metric, params, seconds, val_loss, train_loss, device = row
            return Evaluation(metric, params, seconds, _nan(val_loss), _nan(train_loss), device, cache_hit=True)
        if failures:
            row = self.db.execute("SELECT error, params, seconds, device FROM failures WHERE key = ?", (key,)).fetchone()
            if row is not None:
                error, params, seconds, device = row
                return Evaluation(float("nan"), params, seconds, device=device, cache_hit=True, error=error)
        if stopped:
            row = self.db.execute("SELECT value, fraction, params, seconds, device FROM stopped WHERE key = ?", (key,)).fetchone()
            if row is not None:
                value, fraction, params, seconds, device = row
                return Evaluation(value, params, seconds, device=device, cache_hit=True, fraction=fraction)
        return None

    def put(self, context: str, rank_map: RankMap, evaluation: Evaluation, state_key: str = "") -> Evaluation:
        """Write an evaluation at once; returns the one to act on.

        That is the stored result when another process wrote this key first (marked
        ``cache_hit=True``), else ``evaluation``. A failure is stored as a failure (replaced by a
        later success), a score stopped early as one (replaced by a later full score). ``state_key`` separates results that depend on more than the map (a warm
        start's history).
        """
        key = _key(context, rank_map, state_key)
        if not evaluation.ok:
            self.db.execute(
                "INSERT OR REPLACE INTO failures (key, context, rank_map, error, params, seconds, device, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, context, rank_map.key(), evaluation.error or f"metric is {evaluation.metric}", evaluation.params,
                 evaluation.seconds, evaluation.device, time.time()),
            )
            return evaluation
        if evaluation.stopped:
            self.db.execute(
                "INSERT OR REPLACE INTO stopped (key, context, rank_map, value, fraction, params, seconds, device, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, context, rank_map.key(), evaluation.metric, evaluation.fraction, evaluation.params, evaluation.seconds,
                 evaluation.device, time.time()),
            )
            return evaluation
        written = self.db.execute(
            "INSERT OR IGNORE INTO evaluations (key, context, rank_map, metric, params, seconds, val_loss, train_loss, device, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                context,
                rank_map.key(),
                evaluation.metric,
                evaluation.params,
                evaluation.seconds,
                _none(evaluation.val_loss),
                _none(evaluation.train_loss),
                evaluation.device,
                time.time(),
            ),
        ).rowcount
        self.db.execute("DELETE FROM failures WHERE key = ?", (key,))
        self.db.execute("DELETE FROM stopped WHERE key = ?", (key,))
        if written:
            return evaluation
        return self.get(context, rank_map, failures=False, state_key=state_key)  # another process's result came first

    def find_context(self, purpose: str, backbone: str | None = None, task: str | None = None,
                     evaluator: str | None = None) -> tuple[str, dict[str, Any], list[ModuleInfo]]:
        """The one recorded context with this backbone, task and evaluator (None: any); else an error
        listing what the store holds. ``purpose`` names what needs it, for the message."""
        found = [(c, ident, mods) for c, ident, mods in self.contexts()
                 if (backbone is None or ident.get("backbone") == backbone) and (task is None or ident.get("task") == task)
                 and (evaluator is None or str(ident.get("evaluator", "")).startswith(evaluator))]
        if len(found) != 1:
            described = ", ".join(f"{i.get('backbone')}/{i.get('task')}/{i.get('evaluator')}" for _, i, _ in self.contexts())
            raise FileError(f"{purpose} needs exactly one recorded context in {self.path}, found {len(found)} "
                            f"({described or 'none'}); pick one by backbone, task and evaluator")
        return found[0]

    def contexts(self) -> list[tuple[str, dict[str, Any], list[ModuleInfo]]]:
        rows = self.db.execute("SELECT context, identity, modules FROM contexts").fetchall()
        return [
            (c, json.loads(i), [ModuleInfo(**dict(m, spectrum=tuple(m["spectrum"]))) for m in json.loads(ms)]) for c, i, ms in rows
        ]

    def evaluations(self, context: str | None = None) -> list[dict[str, Any]]:
        """Every stored evaluation (of one context), oldest first, with its rank map decoded."""
        query = "SELECT context, rank_map, metric, params, seconds, val_loss, train_loss, device, created FROM evaluations"
        args: tuple = ()
        if context:
            query, args = query + " WHERE context = ?", (context,)
        cols = ("context", "rank_map", "metric", "params", "seconds", "val_loss", "train_loss", "device", "created")
        rows = [dict(zip(cols, row)) for row in self.db.execute(query + " ORDER BY created", args)]
        for row in rows:
            row["rank_map"] = json.loads(row["rank_map"])
        return rows

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _none(x: float) -> float | None:
    return None if x != x else x  # NaN -> NULL


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x

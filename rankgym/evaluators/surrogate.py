"""The ``surrogate`` evaluator: a regression model fitted to recorded evaluations, any map in milliseconds.

For comparing agents on realistic data in seconds. A table (JSON) holds one recorded context of a
store: its identity, its modules and every evaluation (ranks in module order, metric, seconds);
:func:`build_table` writes one from any store. The model is scikit-learn's
``HistGradientBoostingRegressor`` over the per-module ranks and the map's adapter parameters per
module kind and per block. :func:`held_out_error` says how far to trust it: every map is predicted
by a model fitted without it (grouped K-fold, so a map recorded twice never sits on both sides).

Its ``seconds`` are those of the recorded evaluations (their median), not the milliseconds a
prediction takes, so agents compare on a realistic seconds axis. rankgym ships one table:
MiniLM x SST-2 scored by the elastic evaluator (``RankSearch-minilm-sst2-surrogate-v0``).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from rankgym.errors import ConfigError
from rankgym.core import Evaluation, ModuleInfo, adapter_params
from rankgym.evaluators.base import Evaluator
from rankgym.files import read_json, require
from rankgym.rankmap import RankMap

DATA = Path(__file__).resolve().parent.parent / "data"
SHIPPED = DATA / "surrogate-minilm-sst2-elastic.json"
TABLE_FORMAT = "rankgym.surrogate-table"


def build_table(store_path: str | Path, backbone: str | None = None, task: str | None = None, evaluator: str | None = None) -> dict:
    """One recorded context of a store as a surrogate table (successful evaluations only)."""
    from rankgym.store import EvaluationStore

    store = EvaluationStore(store_path)
    context, identity, modules = store.find_context("a surrogate table", backbone, task, evaluator)
    names = [m.name for m in modules]
    rows = [{"ranks": [int(r["rank_map"]["ranks"].get(n, 0)) for n in names], "metric": r["metric"], "seconds": round(r["seconds"], 3)}
            for r in store.evaluations(context) if r["metric"] is not None and math.isfinite(r["metric"])]
    mods = [dict(m.__dict__, spectrum=[float(f"{x:.4g}") for x in m.spectrum]) for m in modules]
    return {"format": TABLE_FORMAT, "identity": identity, "modules": mods, "evaluations": rows}


def shipped_table(task: str) -> Path:
    """The table rankgym ships for MiniLM x ``task`` (see :data:`rankgym.registry.SURROGATES`)."""
    path = DATA / f"surrogate-minilm-{task}-elastic.json"
    if not path.is_file():
        shipped = sorted(p.name.removeprefix("surrogate-minilm-").removesuffix("-elastic.json") for p in DATA.glob("surrogate-minilm-*-elastic.json"))
        raise ConfigError(f"rankgym ships no surrogate table for {task!r} (it has: {', '.join(shipped)}); pass surrogate_table=PATH, "
                          f"written by `rankgym surrogate STORE --out PATH`")
    return path


def load_table(path: str | Path) -> dict:
    table = require(read_json(path, "a surrogate table"), path, {"format": str, "identity": dict, "modules": list, "evaluations": list},
                    "a surrogate table")
    if table["format"] != TABLE_FORMAT or len(table["evaluations"]) < 10:
        raise ConfigError(f"{path}: not a surrogate table with at least 10 evaluations (write one with rankgym surrogate STORE)")
    return table


def table_modules(table: dict) -> list[ModuleInfo]:
    """The modules a table was recorded on, as :class:`ModuleInfo` (JSON holds the spectrum as a list)."""
    return [ModuleInfo(**{**m, "spectrum": tuple(m["spectrum"])}) for m in table["modules"]]


def features(modules: list[ModuleInfo], ranks: np.ndarray) -> np.ndarray:
    """Per-module ranks, then adapter parameters per kind and per block (in thousands)."""
    ranks = np.atleast_2d(ranks).astype(np.float64)
    cost = np.array([m.in_features + m.out_features for m in modules], dtype=np.float64) / 1000
    groups = [[i for i, m in enumerate(modules) if m.kind == k] for k in dict.fromkeys(m.kind for m in modules)]
    groups += [[i for i, m in enumerate(modules) if m.layer == b] for b in dict.fromkeys(m.layer for m in modules)]
    totals = np.stack([(ranks[:, g] * cost[g]).sum(1) for g in groups], axis=1)
    return np.hstack([ranks, totals, (ranks * cost).sum(1, keepdims=True)])


def _model(seed: int):
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        raise ConfigError("the surrogate evaluator needs scikit-learn: pip install rankgym[surrogate]") from None
    return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, min_samples_leaf=10, random_state=seed)


def held_out_error(table: dict, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Mean absolute error, and Kendall's tau against the recorded metrics, of out-of-fold predictions."""
    from scipy.stats import kendalltau
    from sklearn.model_selection import GroupKFold

    modules = table_modules(table)
    ranks = np.array([e["ranks"] for e in table["evaluations"]])
    y = np.array([e["metric"] for e in table["evaluations"]])
    groups = [hashlib.sha1(r.tobytes()).hexdigest() for r in ranks]
    x = features(modules, ranks)
    predicted = np.empty_like(y)
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        predicted[test] = _model(seed).fit(x[train], y[train]).predict(x[test])
    return {"mae": float(np.abs(predicted - y).mean()), "kendall_tau": float(kendalltau(predicted, y).statistic),
            "spread": float(y.std()), "maps": len(y), "predicted": predicted.tolist()}


class SurrogateEvaluator(Evaluator):
    """Answer any map of a recorded context by a model fitted to its evaluations.

    Args:
        table: a surrogate table (default: the shipped MiniLM x SST-2 elastic one; the env ids pass their task's).
        seed: the regression model's seed.
    """

    name = "surrogate"
    version = 1
    cacheable = False  # a prediction is cheaper than a store lookup

    def __init__(self, table: str | Path | None = None, seed: int = 0) -> None:
        path = Path(table) if table else SHIPPED
        self.table = load_table(path)
        self._modules = table_modules(self.table)
        recorded = self.table["identity"]
        self.alpha_policy = recorded.get("alpha_policy", Evaluator.alpha_policy)
        self.split = f"surrogate of {recorded.get('scored_on', 'score')}"
        ranks = np.array([e["ranks"] for e in self.table["evaluations"]])
        self.model = _model(seed).fit(features(self._modules, ranks), [e["metric"] for e in self.table["evaluations"]])
        self.seconds = statistics.median(e["seconds"] for e in self.table["evaluations"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self._identity = {"backbone": recorded.get("backbone"), "task": recorded.get("task"), "evaluator": f"{self.name}-v{self.version}",
                          "fitted_on": recorded.get("evaluator"), "table": digest, "seed": seed}

    @property
    def modules(self) -> list[ModuleInfo]:
        return self._modules

    def identity(self) -> dict[str, Any]:
        return self._identity

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        ranks = np.array([rank_map.ranks.get(m.name, 0) for m in self._modules])
        metric = float(self.model.predict(features(self._modules, ranks))[0])
        return Evaluation(metric, adapter_params(self._modules, ranks), self.seconds, device="surrogate")


def main_table(store: str, out: str, **filters: Any) -> dict[str, float]:
    """Write a table from ``store`` and return its held-out error (what ``rankgym surrogate`` prints)."""
    table = build_table(store, **filters)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(table, separators=(",", ":")) + "\n")
    return held_out_error(table)

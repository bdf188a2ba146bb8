"""Plots and tables that compare search runs, and the spectral analysis of a backbone's weights."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rankgym.errors import ConfigError, FileError  # noqa: E402
from rankgym.core import ModuleInfo  # noqa: E402
from rankgym.files import read_json, require  # noqa: E402
from rankgym.rankmap import RankMap  # noqa: E402
from rankgym.store import EvaluationStore  # noqa: E402

NUMBER = (int, float)
SUMMARY_FIELDS = {"agent": str, "best_reward": NUMBER, "best_metric": NUMBER, "best_params": int, "evaluations": int,
                  "trained": int, "seconds": NUMBER}
PROMOTION_FIELDS = {"rows": list, "seeds": list, "recipe": dict, "metric": str, "winner": (str, type(None))}
PROMOTION_ROW_FIELDS = {"label": str, "params": int, "search_metric": (*NUMBER, type(None)), "mean": NUMBER, "std": NUMBER, "values": list}
STEP_NUMBERS = ("metric", "params", "cost", "reward", "score", "seconds")


def load_run(path: str | Path) -> dict[str, Any]:
    """A finished run folder (steps.csv, summary.json, best_rank_map.json, store), checked as it is read."""
    path = Path(path)
    for name in ("steps.csv", "summary.json", "best_rank_map.json"):
        if not (path / name).is_file():
            raise ConfigError(f"{path} has no {name}: is it a finished run folder of `rankgym search`?")
    rows = _steps(path / "steps.csv")
    summary_file = path / "summary.json"
    summary = require(read_json(summary_file, "a run's summary.json"), summary_file, SUMMARY_FIELDS, "a run's summary.json")
    if summary.get("promotion") is not None:
        promotion = require(summary["promotion"], summary_file, PROMOTION_FIELDS, "a run's summary.json")
        for row in promotion["rows"]:
            require(row, summary_file, PROMOTION_ROW_FIELDS, "a run's summary.json")
            if not all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in row["values"]):
                raise FileError(f"{summary_file}: promotion values of {row['label']!r} should be numbers, got {row['values']!r}")
    best = RankMap.load(path / "best_rank_map.json").to_dict()
    contexts = EvaluationStore(path / "store.sqlite").contexts() if (path / "store.sqlite").is_file() else []
    modules = contexts[0][2] if contexts else []
    return {"path": path, "rows": rows, "summary": summary, "best": best, "modules": modules,
            "name": f"{summary['agent']} (seed {summary.get('seed')})"}


def _steps(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's steps.csv, numbers parsed; an unreadable line is an error naming it."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (*STEP_NUMBERS, "kind", "cache_hit", "error", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise FileError(f"{path}: no column {', '.join(missing)}; is it a run's steps.csv, unedited?")
            rows = []
            for row in reader:
                try:
                    for key in STEP_NUMBERS:
                        row[key] = float(row[key]) if row[key] not in ("", None) else float("nan")
                except (TypeError, ValueError):
                    raise FileError(f"{path}, line {reader.line_num}: {key} {row[key]!r} is not a number") from None
                row["cache_hit"] = row["cache_hit"] in ("1", "True")
                row["stopped"] = row.get("fraction") not in ("", None)  # absent in runs logged before early stopping
                rows.append(row)
            return rows
    except UnicodeDecodeError as err:
        raise FileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise FileError(f"{path}: not readable as CSV ({err})") from None


def _curves(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best score so far against evaluations and against cumulative evaluation seconds."""
    steps = [r for r in run["rows"] if r["kind"] != "reset"]
    scores = np.array([r["score"] if r["error"] in ("", None) else -np.inf for r in steps])
    seconds = np.cumsum([0.0 if r["cache_hit"] else r["seconds"] for r in steps])
    return np.arange(1, len(steps) + 1), np.maximum.accumulate(scores), seconds


def pareto_front(params: np.ndarray, metric: np.ndarray) -> np.ndarray:
    """Indices of the maps no other map beats on both fewer parameters and higher metric."""
    order = np.lexsort((-metric, params))
    front, best = [], -np.inf
    for i in order:
        if metric[i] > best:
            front.append(i)
            best = metric[i]
    return np.array(front, dtype=int)


def _heatmap(ax, run: dict[str, Any]) -> None:
    ranks = run["best"]["ranks"]
    modules: list[ModuleInfo] = run["modules"]
    kinds = list(dict.fromkeys(m.kind for m in modules))
    layers = sorted({m.layer for m in modules})
    grid = np.full((len(layers), len(kinds)), np.nan)
    for m in modules:
        grid[layers.index(m.layer), kinds.index(m.kind)] = ranks.get(m.name, 0)
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, int(value), ha="center", va="center", color="white" if value < np.nanmax(grid) / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(kinds)), kinds, rotation=30)
    ax.set_yticks(range(len(layers)), [f"block {b}" for b in layers])
    ax.set_title(f"best map: {run['name']}")
    plt.colorbar(image, ax=ax, label="rank")


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write PNG plots plus report.md and report.html comparing ``run_dirs``; returns the folder."""
    runs = [load_run(p) for p in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    fig, (by_evals, by_seconds) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        evals, best, seconds = _curves(run)
        by_evals.step(evals, best, where="post", label=run["name"])
        by_seconds.step(seconds, best, where="post", label=run["name"])
    by_evals.set(xlabel="evaluations", ylabel="best reward (metric - lam * cost)", title="best reward against evaluations")
    by_seconds.set(xlabel="evaluation seconds (cache hits cost 0)", title="best reward against seconds")
    by_evals.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "best_reward.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 5))
    rows = [r for run in runs for r in run["rows"] if r["error"] in ("", None) and np.isfinite(r["metric"]) and not r["stopped"]]
    params = np.array([r["params"] for r in rows])
    metric = np.array([r["metric"] for r in rows])
    for run in runs:
        mine = [r for r in run["rows"] if r["error"] in ("", None) and np.isfinite(r["metric"]) and not r["label"] and not r["stopped"]]
        ax.scatter([r["params"] for r in mine], [r["metric"] for r in mine], s=12, alpha=0.5, label=run["name"])
    baselines = [r for r in rows if r["label"]]
    for r in baselines:
        ax.scatter(r["params"], r["metric"], marker="*", s=140, color="black", zorder=3)
        ax.annotate(r["label"], (r["params"], r["metric"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if len(rows):
        front = pareto_front(params, metric)
        ax.plot(params[front], metric[front], "r-", lw=1.5, label="Pareto front", zorder=2)
    ax.set(xlabel="trainable adapter parameters", ylabel="validation metric", title="every evaluated map (stars: baselines)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metric_vs_params.png", dpi=110)
    plt.close(fig)

    heatmaps = []
    for i, run in enumerate(runs):
        if not run["modules"]:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.45 * len({m.layer for m in run["modules"]}) + 2))
        _heatmap(ax, run)
        fig.tight_layout()
        name = f"best_map_{i}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        heatmaps.append(name)

    header = ["run", "agent", "best reward", "metric", "adapter params", "evaluations", "trained", "seconds"]
    table = [[str(run["path"]), run["summary"]["agent"], f"{run['summary']['best_reward']:.4f}",
              f"{run['summary']['best_metric']:.4f}", f"{run['summary']['best_params']:,}", str(run["summary"]["evaluations"]),
              str(run["summary"]["trained"]), f"{run['summary']['seconds']:.0f}"] for run in runs]
    images = ["best_reward.png", "metric_vs_params.png", *heatmaps]
    sections = [("Runs (search scores: examples held out of training)", header, table)] + headroom_table(runs) + promotion_tables(runs)
    md = ["# rankgym report"]
    for title, head, body in sections:
        md += ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(row) + " |" for row in body]
    md += ["", *[f"![{name}]({name})" for name in images], ""]
    (out / "report.md").write_text("\n".join(md))
    page = "<!doctype html><meta charset=utf-8><title>rankgym report</title><h1>rankgym report</h1>"
    for title, head, body in sections:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        page += f"<h2>{html.escape(title)}</h2><table border=1 cellpadding=4><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{cells}</table>"
    page += "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    (out / "report.html").write_text(page)
    return out


def headroom_table(runs: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Whether each run's budget bound (the runs that measured it: a budget and the elastic evaluator)."""
    body = [[str(run["path"]), f"{h['budget_params']:,}", h["best"], f"{100 * h['gap']:.1f} points",
             "not measured" if h["noise"] is None else f"{100 * h['noise']:.1f} points", h["sentence"]]
            for run in runs if isinstance(h := run["summary"].get("headroom"), dict)]
    head = ["run", "budget (params)", "best free heuristic", "gap to uniform max_rank", "seed noise", ""]
    return [("Headroom (elastic scores, score split)", head, body)] if body else []


def promotion_tables(runs: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """One table per promoted run: each map's search score and its retrained validation numbers."""
    tables = []
    for run in runs:
        promotion = run["summary"].get("promotion")
        if not promotion:
            continue
        head = ["map", "adapter params", "search metric", f"score split {promotion['metric']} (chooses)",
                f"validation {promotion['metric']} (mean ± std)", "per seed", ""]
        tied = promotion.get("tied", [])
        body = [[row["label"], f"{row['params']:,}", "" if row["search_metric"] is None else f"{row['search_metric']:.4f}",
                 f"{row['score_mean']:.4f} ± {row['score_std']:.4f}" if "score_mean" in row else "",
                 f"{row['mean']:.4f} ± {row['std']:.4f}", ", ".join(f"{v:.4f}" for v in row["values"]),
                 "winner" if row["label"] == promotion["winner"] else ("ties" if row["label"] in tied else "")]
                for row in promotion["rows"]]
        title = (f"Promotion of {run['name']}: retrained with seeds {promotion['seeds']} on "
                 f"{promotion['recipe']['train_examples']:,} examples, chosen on the score split, reported on the validation split")
        tables.append((title, head, body))
    return tables


def analyze_backbone(modules: list[ModuleInfo], out: str | Path, fractions=(0.8, 0.9, 0.95)) -> dict[str, Any]:
    """The article's section 3.2: singular-value spectra and the 80/90/95 % ranks of each module."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = {m.name: {"kind": m.kind, "layer": m.layer, "shape": [m.in_features, m.out_features],
                      **{f"r{round(f * 100)}": m.energy_rank(f) for f in fractions}} for m in modules}
    (out / "spectral_ranks.json").write_text(json.dumps(table, indent=2) + "\n")
    kinds = list(dict.fromkeys(m.kind for m in modules))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for kind in kinds:
        for j, m in enumerate(x for x in modules if x.kind == kind):
            s = np.asarray(m.spectrum)
            color = f"C{kinds.index(kind)}"
            axes[0].semilogy(s[:100], color=color, alpha=0.6, label=kind if j == 0 else None)
            axes[1].plot(np.cumsum(s) / s.sum(), color=color, alpha=0.6, label=kind if j == 0 else None)
    for f, style in zip(fractions, (":", "--", "-.")):
        axes[1].axhline(f, color="k", ls=style, lw=0.8)
    axes[0].set(xlabel="component", ylabel="singular value", title="top 100 singular values of each frozen weight")
    axes[1].set(xlabel="components", ylabel="cumulative share of singular-value sum", title="80 / 90 / 95 % ranks")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "spectra.png", dpi=110)
    plt.close(fig)
    return table

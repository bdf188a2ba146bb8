"""Every rank-allocation strategy at equal parameters, each answer retrained with three seeds.

    python benchmarks/strategies.py                                    # SST-2 at 12.5 % of uniform-8
    python benchmarks/strategies.py --tasks sst2 stsb --fractions 0.05 0.125
    python benchmarks/strategies.py --strategies uniform prilora eva --seeds 0 1

For each task and budget (a fraction of uniform rank 8's adapter parameters on MiniLM, whose 36
modules at rank 1 cost exactly 12.5 %), every strategy proposes one map within the budget:

- fixed maps: ``uniform`` (uniform rank 8 scaled onto the budget: the env's own start, rank 1 at
  12.5 %), ``prilora``, ``presets`` (low), ``spectral`` (90 %), each projected onto the budget by
  the env's one rule;
- one-shot strategies, run through ``rankgym search --agent NAME`` (their seconds are the run's):
  ``adalora``, ``eva``, ``growth`` (adaptive), ``autolora``; ``adalora`` and ``growth`` are skipped
  below uniform rank 1's parameters, which they refuse;
- searches of 64 elastic evaluations (ranks 0..16 in steps of 1, the adapter trained once per
  run): ``tpe``, ``ppo``, ``random``.

Then every distinct map is retrained with the full recipe (8,192 examples) and seeds 0, 1, 2 and
validated on the validation split, which no strategy read; the table gives mean ± std, the
parameters and the strategy's seconds. Results are kept in ``--out`` (``results.json``), so a
killed run resumes; prints a Markdown table and writes the four-panel figure (metric per task and
strategy, parameters, seconds, metric against parameters with the Pareto front) as PNG and SVG,
plus best-so-far against seconds for the searches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FIXED = ("uniform", "prilora", "presets", "spectral")
ONE_SHOT = {"adalora": [], "eva": [], "growth": ["--set", "schedule=adaptive"], "autolora": []}
SEARCHES = ("tpe", "ppo", "random")
ALL = FIXED + tuple(ONE_SHOT) + SEARCHES
AT_LEAST_RANK_1 = ("growth", "adalora")  # they refuse a budget below uniform rank 1 (see their agents)


def env_of(task: str, budget: int, elastic: bool) -> tuple[str, list[str]]:
    """The env id and its options: ranks 0..16 in steps of 1, the budget; elastic scores for searches."""
    options = ["--param-budget", str(budget), "--env", "rank_step=1"]
    return f"RankSearch-minilm-{task}-v0", options + (["--env", "evaluator='elastic'"] if elastic else [])


def search(name: str, task: str, budget: int, out: Path, evaluations: int) -> dict:
    """Run one strategy through the CLI (a fresh process, as a user would); returns its summary."""
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    env_id, options = env_of(task, budget, name in SEARCHES)
    agent_options = ONE_SHOT.get(name, [])
    resume = ["--resume", str(out)] if (out / "config.json").is_file() else [env_id, "--agent", name, "--out", str(out),
                                                                               "--budget", str(evaluations), *options, *agent_options]
    subprocess.run([sys.executable, "-m", "rankgym.cli", "search", *resume, "--no-promote", "--no-report"], check=True)
    return json.loads((out / "summary.json").read_text())


def fixed_map(name: str, modules, budget: int) -> list[int]:
    """A fixed family's map, projected onto the budget by the env's rule (ranks 0..16 in steps of 1)."""
    from rankgym.budget import project
    from rankgym.strategies import preset_ranks, prilora_ranks, spectral_ranks, uniform_ranks

    raw = {"uniform": lambda: uniform_ranks(modules, 8), "prilora": lambda: prilora_ranks(modules, 8),
           "presets": lambda: preset_ranks(modules, "low"), "spectral": lambda: spectral_ranks(modules, 0.9, budget)}[name]()
    return [int(r) for r in project(raw, modules, budget, 0, 1)]


def retrain(task: str, maps: dict[str, dict[str, int]], seeds: list[int], results: dict, save) -> None:
    """Full-recipe retrains on the validation split, seed by seed (one resident model per seed)."""
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.rankmap import RankMap
    from rankgym.recipe import ALPHA_POLICY, Recipe

    for seed in seeds:
        todo = {k: m for k, m in maps.items() if str(seed) not in results.setdefault(task, {}).setdefault(k, {})}
        if not todo:
            continue
        evaluator = FinetuneEvaluator("minilm", task, Recipe(), seed=seed, score_on="validation", max_rank=32)
        for key, ranks in todo.items():
            e = evaluator.evaluate(RankMap(ranks, **ALPHA_POLICY))
            results[task][key][str(seed)] = {"metric": e.metric, "seconds": e.seconds}
            save()
            print(f"  {task} seed {seed}: {e.metric:.4f} ({e.seconds:.0f} s)", flush=True)
        evaluator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125], help="budgets, as fractions of uniform rank 8's parameters")
    parser.add_argument("--strategies", nargs="+", default=list(ALL), choices=list(ALL))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=64, help="elastic evaluations of each search")
    parser.add_argument("--out", default="runs/strategies")
    args = parser.parse_args()

    import gymnasium as gym

    import rankgym  # noqa: F401
    from rankgym.core import adapter_params

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}

    def save() -> None:
        tmp = store.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, store)

    rows = []
    for task in args.tasks:
        env = gym.make(f"RankSearch-minilm-{task}-v0", train_examples=1).unwrapped  # for its modules
        names, modules = env.names, env.modules
        env.close()
        reference = adapter_params(modules, [8] * len(modules))
        for fraction in args.fractions:
            budget = int(fraction * reference)
            maps = {}
            for name in args.strategies:
                label = f"{task}-{fraction:g}-{name}"
                if name in AT_LEAST_RANK_1 and adapter_params(modules, [1] * len(modules)) > budget:
                    print(f"{label}: skipped, {name} needs at least uniform rank 1's parameters", flush=True)
                    continue
                started = time.time()
                if name in FIXED:
                    ranks, seconds, curve = fixed_map(name, modules, budget), 0.0, None
                else:
                    summary = search(name, task, budget, out / "runs" / label, args.evaluations)
                    answer = json.loads((out / "runs" / label / "best_rank_map.json").read_text())["ranks"]
                    ranks, seconds = [int(answer.get(n, 0)) for n in names], summary["seconds"]
                    curve = str(out / "runs" / label) if name in SEARCHES else None
                key = json.dumps(dict(zip(names, ranks)), sort_keys=True)
                maps[key] = dict(zip(names, ranks))
                rows.append({"task": task, "fraction": fraction, "strategy": name, "key": key, "seconds": seconds or time.time() - started,
                             "params": adapter_params(modules, ranks), "run": curve})
                assert rows[-1]["params"] <= budget, (name, rows[-1]["params"], budget)
            print(f"{task} at {fraction:g} of uniform-8 ({budget:,} parameters): retraining {len(maps)} distinct maps", flush=True)
            retrain(task, maps, args.seeds, results, save)

    table = []
    for row in rows:
        values = [results[row["task"]][row["key"]][str(s)]["metric"] for s in args.seeds]
        table.append({**{k: v for k, v in row.items() if k != "key"}, "mean": statistics.mean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values})
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    lines = ["| task | budget | strategy | validation metric (mean ± std, seeds " + ", ".join(map(str, args.seeds)) + ") | parameters | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t in sorted(table, key=lambda t: (t["task"], t["fraction"], -t["mean"])):
        lines.append(f"| {t['task']} | {t['fraction']:.1%} | {t['strategy']} | {t['mean']:.4f} ± {t['std']:.4f} | {t['params']:,} | {t['seconds']:.0f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, out)


def save(fig, stem: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    fig.tight_layout(rect=rect)
    for ext in ("png", "svg"):
        fig.savefig(stem.with_suffix(f".{ext}"), dpi=120)


def plot(table: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankgym.report import pareto_front

    groups = sorted({(t["task"], t["fraction"]) for t in table})
    strategies = list(dict.fromkeys(t["strategy"] for t in table))
    colors = {s: plt.cm.tab20(i % 20) for i, s in enumerate(strategies)}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    width = 0.8 / max(1, len(strategies))
    for i, s in enumerate(strategies):
        cells = [next((t for t in table if (t["task"], t["fraction"]) == g and t["strategy"] == s), None) for g in groups]
        x = np.arange(len(groups)) + i * width
        axes[0, 0].bar(x, [c["mean"] if c else np.nan for c in cells], width, yerr=[c["std"] if c else 0 for c in cells],
                       color=colors[s], label=s)
        axes[0, 1].bar(x, [c["params"] if c else np.nan for c in cells], width, color=colors[s])
        axes[1, 0].bar(x, [max(c["seconds"], 1) if c else np.nan for c in cells], width, color=colors[s])
    for ax, title in ((axes[0, 0], "validation metric (mean ± std over seeds)"), (axes[0, 1], "adapter parameters"),
                      (axes[1, 0], "strategy's own seconds (log)")):
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"{task} @ {fraction:.1%}" for task, fraction in groups])
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[1, 0].set_yscale("log")
    means = [t["mean"] for t in table]
    axes[0, 0].set_ylim(min(means) - 0.02, max(means) + 0.02)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=min(len(strategies), 11), fontsize=8)
    ax = axes[1, 1]
    tasks = sorted({t["task"] for t in table})
    markers = dict(zip(tasks, "osD^v"))
    for task in tasks:  # metrics of different tasks are not comparable: one front per task
        rows = [t for t in table if t["task"] == task]
        for t in rows:
            ax.errorbar(t["params"], t["mean"], yerr=t["std"], fmt=markers[task], color=colors[t["strategy"]], capsize=2)
        params, metric = np.array([t["params"] for t in rows]), np.array([t["mean"] for t in rows])
        front = sorted(pareto_front(params, metric), key=lambda i: params[i])
        ax.plot(params[front], metric[front], "--", color="k", marker=markers[task], mfc="none", lw=1, label=f"{task}: Pareto front")
    ax.set(xlabel="adapter parameters", ylabel="validation metric", title="metric against parameters")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, out / "strategies", rect=(0, 0, 1, 0.95))  # room for the legend above the panels

    searches = [t for t in table if t["run"]]
    if searches:
        import csv

        cells = sorted({(t["task"], t["fraction"]) for t in searches})
        fig, axes = plt.subplots(1, len(cells), figsize=(4.5 * len(cells), 3.6), squeeze=False)
        for ax, (task, fraction) in zip(axes[0], cells):  # one panel per cell: scores of different tasks do not share a scale
            for t in (t for t in searches if (t["task"], t["fraction"]) == (task, fraction)):
                with (Path(t["run"]) / "steps.csv").open() as f:
                    steps = list(csv.DictReader(f))
                seconds = np.cumsum([float(r["seconds"] or 0) for r in steps])
                best = np.maximum.accumulate([float(r["score"]) if r["score"] else -np.inf for r in steps])
                ax.plot(seconds, best, color=colors[t["strategy"]], label=t["strategy"])
            ax.set(xlabel="evaluation seconds", title=f"{task} @ {fraction:.1%}: best so far")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0, 0].set_ylabel("best search score (elastic, score split)")
        save(fig, out / "searches")
    print(f"wrote {out / 'table.md'}, {out / 'strategies.png'} (and .svg)")


if __name__ == "__main__":
    main()

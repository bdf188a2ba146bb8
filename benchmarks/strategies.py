"""Rank-allocation strategies at equal parameters, each answer promoted as a user gets it.

    python benchmarks/strategies.py --tasks mrpc --fractions 0.125          # one cell
    python benchmarks/strategies.py --tasks cola rte mrpc --fractions 0.05 0.125 0.25
    python benchmarks/strategies.py --strategies tpe adalora --headroom-seeds 2
    python benchmarks/strategies.py --tasks mrpc --env score_examples=1000 --out runs/strategies-score1000
    python benchmarks/strategies.py --tasks cola mrpc --fractions 0.05 --strategies ppo tpe --evaluations 128 \
        --search-seeds 3 --ppo-policy cola=runs/ppo-no-cola.zip --ppo-policy mrpc=runs/ppo-no-mrpc.zip   # held-out tasks

For each task and budget (a fraction of uniform rank 8's adapter parameters on MiniLM, whose 36
modules at rank 1 cost exactly 12.5 %), everything runs through the CLI in fresh processes, as a
user would, on one store per task (``--env store=``), so the elastic adapter, the free heuristics
(EVA is computed once per task and budget) and every retrain are shared by the cell's runs:

1. ``rankgym headroom`` with ``--headroom-seeds`` elastic adapters: whether the budget binds, and
   the seed noise of elastic scores;
2. each strategy through ``rankgym search --agent NAME --promote 1``: the searches (``tpe``,
   ``ppo``, ``random``; 64 elastic evaluations, ranks 0..16 in steps of 1) start from the free
   heuristics; the one-shot strategies (``adalora``, ``growth``, ``autolora``) train on their own.
   Promotion retrains the strategy's answer beside the free heuristics at the budget (uniform,
   PRILoRA, EVA) with the task's full recipe and seeds 0, 1, 2,
   chooses on the score split and reports the validation split, which no strategy read. By default
   every row gets every seed (``--promote-halving 0``), and what successive halving would have
   chosen and saved is replayed on those complete tables (:func:`rankgym.promotion.replay_halving`).

``--search-seeds N`` runs every search with seeds 0..N-1 (each promoted; the store shares the
heuristics' retrains) and adds a line per strategy that summarises its own and its promoted
answers over the search seeds. ``--ppo-policy TASK=POLICY`` starts PPO on TASK from POLICY (``--set pretrained=``),
e.g. one pretrained without TASK (``agents/ppo.py --pretrain``), to test it on a task it never saw.

The table gives, per cell, the free heuristics' rows, each strategy's own answer and what its
promotion answered, and a verdict against the best free heuristic (the one promotion's rule puts
first on the score split): ``beats`` where the promoted answer's validation mean is ahead by more
than both seed standard deviations, ``ties`` within them, ``behind`` otherwise. A killed run
resumes (every run folder, and the store, keep what finished). Writes ``table.md``,
``table.json`` and a figure per cell (``strategies.png`` / ``.svg``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEARCHES = ("tpe", "ppo", "random")
ONE_SHOT = {"adalora": [], "growth": ["--set", "schedule=adaptive"], "autolora": []}
ALL = SEARCHES + tuple(ONE_SHOT)
AT_LEAST_RANK_1 = ("growth", "adalora")  # they refuse a budget below uniform rank 1 (see their agents)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rankgym.cli", *args], check=True, stdout=subprocess.PIPE, text=True)


def env_options(budget: int, extra: list[str]) -> list[str]:
    """The env options of every run: the budget, the rank grid, and the benchmark's own ``--env KEY=VALUE``."""
    return ["--param-budget", str(budget), "--env", "rank_step=1", *(a for kv in extra for a in ("--env", kv))]


def headroom(env_id: str, store: Path, budget: int, seeds: int, cell: Path, extra: list[str]) -> dict:
    path = cell / "headroom.json"
    if not path.is_file():
        lines = cli("headroom", env_id, *env_options(budget, extra), "--seeds", str(seeds), "--store", str(store), "--json").stdout.splitlines()
        path.write_text(json.dumps(json.loads(lines[-1]), indent=1) + "\n")
    return json.loads(path.read_text())


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}-seed{seed}"


def strategy(name: str, env_id: str, store: Path, budget: int, evaluations: int, cell: Path, halving: float, extra: list[str],
             seed: int = 0, policy: str | None = None) -> dict:
    """One strategy's run with search seed ``seed``, promoted; returns its summary (and the run's wall seconds).
    ``policy``: PPO's pretrained policy (default: the shipped one)."""
    out = cell / run_name(name, seed)
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    started = time.time()
    if (out / "config.json").is_file():
        cli("search", "--resume", str(out), "--no-report")
    else:
        cli("search", env_id, "--agent", name, "--out", str(out), "--budget", str(evaluations), "--seed", str(seed),
            "--promote", "1", "--promote-halving", str(halving), "--no-report", *env_options(budget, extra), "--env", f"store='{store}'",
            *(["--env", "evaluator='elastic'"] if name in SEARCHES else []), *ONE_SHOT.get(name, []),
            *(["--set", f"pretrained={policy}"] if policy and name == "ppo" else []))
    summary = json.loads((out / "summary.json").read_text())
    summary["benchmark_seconds"] = time.time() - started  # search and promotion, this process's part of it
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def verdict(row: dict, reference: dict) -> str:
    """``beats`` / ``ties`` / ``behind`` the reference by validation mean against both seed spreads."""
    diff, spread = row["mean"] - reference["mean"], max(row["std"], reference["std"])
    return "beats" if diff > spread else "ties" if diff >= -spread else "behind"


def cell_rows(summaries: dict[str, dict]) -> tuple[list[dict], dict | None]:
    """The heuristics' rows (from the first promotion: the store makes them the same in every one),
    each strategy's answer and its promoted answer; and the best free heuristic."""
    rows, heuristics = [], None
    for name, summary in summaries.items():
        table = summary["promotion"]["rows"]
        if heuristics is None:
            heuristics = [r for r in table if {"uniform", "heuristic"} & set(r["roles"])]
            rows += [{**r, "strategy": r["label"], "kind": "heuristic"} for r in heuristics]
        own = next((r for r in table if "search" in r["roles"]), None)
        if own is not None:
            rows.append({**own, "strategy": name, "agent": summary["agent"], "kind": "answer",
                         "run_seconds": summary.get("benchmark_seconds", summary["seconds"])})
        winner = next(r for r in table if r["label"] == summary["promotion"]["winner"])
        rows.append({**winner, "strategy": f"{name} promoted", "agent": summary["agent"], "kind": "promoted", "winner_label": winner["label"],
                     "tied": summary["promotion"]["tied"]})
    best = max(heuristics, key=lambda r: r["choice"]) if heuristics else None
    for r in rows:
        if best is not None and r["kind"] != "heuristic":
            r["verdict"] = verdict(r, best)
    return rows, best


def across_seeds(rows: list[dict], best: dict | None) -> dict[str, dict]:
    """Per search strategy, over its search seeds: the mean and std of the validation means of its
    own answers and of its promoted answers (search and retrain noise together), the latter against
    the best free heuristic."""
    out: dict[str, dict] = {}
    for r in rows:
        if r["kind"] in ("answer", "promoted"):
            agg = out.setdefault(r["agent"], {"means": [], "winners": [], "answers": []})
            if r["kind"] == "answer":
                agg["answers"].append(r["mean"])
            else:
                agg["means"].append(r["mean"])
                agg["winners"].append(r["winner_label"])
    spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0  # noqa: E731
    for agg in out.values():
        agg["mean"], agg["std"] = statistics.fmean(agg["means"]), spread(agg["means"])
        if agg["answers"]:
            agg["answer_mean"], agg["answer_std"] = statistics.fmean(agg["answers"]), spread(agg["answers"])
        if best is not None:
            agg["verdict"] = verdict(agg, best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125], help="budgets, as fractions of uniform rank 8's parameters")
    parser.add_argument("--strategies", nargs="*", default=["tpe", "ppo", "adalora"], choices=list(ALL))
    parser.add_argument("--evaluations", type=int, default=64, help="elastic evaluations of each search")
    parser.add_argument("--search-seeds", type=int, default=1, help="seeds of every search (0..N-1), each run promoted")
    parser.add_argument("--ppo-policy", action="append", default=[], metavar="TASK=POLICY",
                        help="PPO's pretrained policy on TASK (repeatable; default the shipped one), e.g. one pretrained without TASK")
    parser.add_argument("--headroom-seeds", type=int, default=2, help="elastic adapters the headroom's noise is measured over")
    parser.add_argument("--promote-halving", type=float, default=0.0,
                        help="promotion's successive halving (0: every row gets every seed, and halving is replayed on the full tables)")
    parser.add_argument("--backbone", default="minilm", help="tiny: a smoke run of the whole benchmark in a minute or two")
    parser.add_argument("--out", default="runs/strategies")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="gym.make override of every run, e.g. score_examples=1000 (cell folders are reused, so give each setting its own --out)")
    args = parser.parse_args()
    policies = dict(item.split("=", 1) for item in args.ppo_policy)
    for task, policy in policies.items():
        if not Path(policy).is_file():
            parser.error(f"--ppo-policy {task}={policy}: no such file; pretrain one: python agents/ppo.py --pretrain {policy}")

    import gymnasium as gym

    import rankgym  # noqa: F401
    from rankgym.core import adapter_params

    out = Path(args.out).resolve()
    table = []
    for task in args.tasks:
        env_id, store = f"RankSearch-{args.backbone}-{task}-v0", out / task / "store.sqlite"
        store.parent.mkdir(parents=True, exist_ok=True)
        env = gym.make(env_id, train_examples=1).unwrapped  # for its modules
        modules = env.modules
        env.close()
        for fraction in args.fractions:
            budget = int(fraction * adapter_params(modules, [8] * len(modules)))
            cell = out / task / f"{fraction:g}"
            cell.mkdir(parents=True, exist_ok=True)
            print(f"{task} at {fraction:g} of uniform-8 ({budget:,} parameters): headroom", flush=True)
            room = headroom(env_id, store, budget, args.headroom_seeds, cell, args.env)
            print(f"  {room['sentence']}", flush=True)
            summaries = {}
            for name in args.strategies:
                if name in AT_LEAST_RANK_1 and adapter_params(modules, [1] * len(modules)) > budget:
                    print(f"  {name}: skipped, it needs at least uniform rank 1's parameters", flush=True)
                    continue
                for seed in range(args.search_seeds if name in SEARCHES else 1):
                    print(f"  {run_name(name, seed)}: search and promotion", flush=True)
                    summaries[run_name(name, seed)] = strategy(name, env_id, store, budget, args.evaluations, cell, args.promote_halving,
                                                               args.env, seed, policies.get(task))
            if not summaries:  # the headroom alone
                continue
            rows, best = cell_rows(summaries)
            replays = {}
            if not args.promote_halving:  # what halving would have saved and chosen, replayed on the complete tables
                from rankgym.promotion import replay_halving

                replays = {name: replay_halving(s["promotion"], 3.0) for name, s in summaries.items()}
            table.append({"task": task, "fraction": fraction, "headroom": room, "best_heuristic": best and best["label"], "rows": rows,
                          "halving_replays": replays, "across_seeds": across_seeds(rows, best) if args.search_seeds > 1 else {},
                          "ppo_policy": policies.get(task)})
            (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")
    if not table:
        return
    lines = markdown(table)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, out)


def fmt(row: dict) -> str:
    return f"{row['mean']:.4f} ± {row['std']:.4f} ({row['seeds']})"


def markdown(table: list[dict]) -> list[str]:
    lines = []
    for cell in table:
        room = cell["headroom"]
        noise = "not measured" if room["noise"] is None else f"{100 * room['noise']:.1f}"
        lines += [f"### {cell['task']} at {cell['fraction']:.1%} of uniform rank 8 ({room['budget_params']:,} parameters)", "",
                  f"Headroom (elastic, score split): {room['top']} is {100 * room['gap']:+.1f} points over {room['best']}, seed noise "
                  f"{noise} points. Best free heuristic by promotion's rule: {cell['best_heuristic']}.", "",
                  "| row | map | validation, mean ± std (seeds) | score split, mean ± std | parameters | seconds per retrain | run seconds | against the best heuristic |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in cell["rows"]:
            retrain = statistics.median(r["seconds"]) if r.get("seconds") else float("nan")
            note = r.get("verdict", "")
            if r["kind"] == "promoted":
                note += f" (answer: {r['winner_label']}" + (f"; ties {', '.join(r['tied'])}" if r["tied"] else "") + ")"
            if r.get("stopped"):
                note += " stopped early"
            run = f"{r['run_seconds']:.0f}" if "run_seconds" in r else ""
            lines.append(f"| {r['strategy']} | {r['label']} | {fmt(r)} | {r['score_mean']:.4f} ± {r['score_std']:.4f} | {r['params']:,} | "
                         f"{retrain:.0f} | {run} | {note.strip()} |")
        for name, agg in cell.get("across_seeds", {}).items():
            policy = f" (pretrained policy {Path(cell['ppo_policy']).name})" if name == "ppo" and cell.get("ppo_policy") else ""
            own = f"its own answers {agg['answer_mean']:.4f} ± {agg['answer_std']:.4f}; " if "answer_mean" in agg else ""
            lines.append(f"- {name}{policy} over {len(agg['means'])} search seeds (validation, std across seeds): {own}promoted "
                         f"{agg['mean']:.4f} ± {agg['std']:.4f}, {agg.get('verdict', '')} the best heuristic; promoted answers "
                         f"{', '.join(agg['winners'])}")
        for name, replay in cell.get("halving_replays", {}).items():
            lines.append(f"- halving (3 spreads) replayed on {name}'s promotion: winner {replay['winner']} "
                         f"({'the same as' if replay['same'] else 'not'} every seed's {replay['full_winner']}; validation gap "
                         f"{replay['validation_gap']:+.4f}, its std {replay['full_winner_std']:.4f}), "
                         f"{replay['retrains']} of {replay['full_retrains']} retrains")
        lines.append("")
    return lines


def plot(table: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 4.2), squeeze=False)
    colors = {"heuristic": "tab:gray", "answer": "tab:blue", "promoted": "tab:green"}
    for ax, cell in zip(axes[0], table):  # one panel per cell: metrics of different tasks do not share a scale
        rows = cell["rows"]
        ax.bar(range(len(rows)), [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=3,
               color=[colors[r["kind"]] for r in rows])
        ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows], rotation=45, ha="right", fontsize=8)
        means = [r["mean"] for r in rows]
        ax.set_ylim(min(means) - 0.03, max(means) + 0.03)
        room = cell["headroom"]
        ax.set_title(f"{cell['task']} @ {cell['fraction']:.1%}: headroom {100 * room['gap']:+.1f} pts", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("validation metric (mean ± std over seeds)")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(out / f"strategies.{ext}", dpi=120)
    print(f"wrote {out / 'table.md'}, {out / 'strategies.png'} (and .svg)")


if __name__ == "__main__":
    main()

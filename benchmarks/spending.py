"""Where a policy spends the budget, against where a task's real scores reward spending it.

    python benchmarks/spending.py                                            # every shipped table
    python benchmarks/spending.py --policy mrpc=runs/ppo-no-mrpc.zip --policy cola=runs/ppo-no-cola.zip

For each shipped real-score table (MiniLM, elastic scores of ~500 maps at one budget), the share
of a map's adapter parameters each module kind and each block holds: averaged over all the
table's maps and over its best tenth, and the points of the task's metric a linear fit over the
table gives per 1,000 parameters moved into that group (kinds and blocks fitted separately: both
sum to the map's total). A group the best tenth holds more of than the average map, with a
positive slope, is one the task rewards. ``--policy TASK=POLICY`` adds a PPO policy's most likely
map on the task's surrogate (the first map a search from that policy evaluates: what it learned,
before any exploration): its shares and its surrogate score against the table's best map. Printed
and plotted (``--out``: ``spending.png``, ``spending.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def group_params(modules, ranks: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each module kind's and block's name (``kind:query``, ``block:0``) and, per map (rows of ``ranks``),
    its adapter parameters in thousands: the group columns of the surrogate's :func:`features`."""
    from rankgym.evaluators.surrogate import features

    names = [f"kind:{k}" for k in dict.fromkeys(m.kind for m in modules)] + [f"block:{b}" for b in dict.fromkeys(m.layer for m in modules)]
    return names, features(modules, ranks)[:, len(modules) : len(modules) + len(names)]


def shares(params: np.ndarray, names: list[str]) -> np.ndarray:
    """Each group's share of its map's adapter parameters (0 where the map has none)."""
    total = params[:, [n.startswith("kind:") for n in names]].sum(1, keepdims=True)  # the kinds partition the modules
    return np.divide(params, total, out=np.zeros_like(params), where=total > 0)


def slopes(params: np.ndarray, names: list[str], metric: np.ndarray, prefix: str) -> dict[str, float]:
    """Metric points per 1,000 parameters in each group of ``prefix``, from one least-squares fit over the table."""
    from sklearn.linear_model import LinearRegression

    columns = [i for i, n in enumerate(names) if n.startswith(prefix)]
    fit = LinearRegression().fit(params[:, columns], metric)
    return {names[i]: 100 * float(c) for i, c in zip(columns, fit.coef_)}


def greedy_map(task: str, policy: str) -> tuple[list[int], float]:
    """The policy's most likely map on ``task``'s surrogate env and that env's score of it."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    import rankgym  # noqa: F401
    from rankgym.agents.ppo import has_task_features
    from rankgym.envs.allocation import RankAllocationEnv

    search = gym.make(f"RankSearch-minilm-{task}-surrogate-v0").unwrapped
    env = RankAllocationEnv(search, task_features=has_task_features(Path(policy), RankAllocationEnv(search)))
    model = PPO.load(policy, device="cpu")
    obs, finished, info = env.reset(seed=0)[0], False, {}
    while not finished:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, finished, _, info = env.step(int(action))
    return [int(r) for r in env.ranks], float(info["metric"])


def analyse(task: str, policy: str | None, top: float) -> dict:
    from rankgym.evaluators.surrogate import load_table, shipped_table, table_modules

    table = load_table(shipped_table(task))
    modules = table_modules(table)
    names, params = group_params(modules, np.array([e["ranks"] for e in table["evaluations"]]))
    metric = np.array([e["metric"] for e in table["evaluations"]])
    every = shares(params, names)
    best = metric >= np.quantile(metric, 1 - top)
    metric_name = table["identity"].get("metric", "accuracy")  # SST-2's table predates the field
    result = {"task": task, "maps": len(metric), "metric": metric_name, "groups": names,
              "all": every.mean(0).tolist(), "top": every[best].mean(0).tolist(),
              "slope": {**slopes(params, names, metric, "kind:"), **slopes(params, names, metric, "block:")},
              "table_best": float(metric.max())}
    if policy:
        chosen, score = greedy_map(task, policy)
        result.update(policy=str(policy), policy_ranks=chosen, policy_score=score,
                      policy_shares=shares(group_params(modules, np.array(chosen))[1], names)[0].tolist())
    return result


def report(results: list[dict], top: float) -> list[str]:
    lines = []
    for r in results:
        lines += [f"### {r['task']} ({r['maps']} maps, {r['metric']}; best in the table {r['table_best']:.4f}"
                  + (f"; the policy's map {r['policy_score']:.4f}, {Path(r['policy']).name}" if "policy" in r else "") + ")", "",
                  f"| group | share, all maps | share, best {top:.0%} | points per 1k params (fit) |"
                  + (" share, policy's map |" if "policy" in r else ""),
                  "| --- | --- | --- | --- |" + (" --- |" if "policy" in r else "")]
        for i, g in enumerate(r["groups"]):
            row = f"| {g} | {r['all'][i]:.3f} | {r['top'][i]:.3f} | {r['slope'][g]:+.2f} |"
            lines.append(row + (f" {r['policy_shares'][i]:.3f} |" if "policy" in r else ""))
        lines.append("")
    return lines


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 2.8 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        x = np.arange(len(r["groups"]))
        bars = [("all maps", r["all"]), ("best tenth", r["top"])] + ([("policy's map", r["policy_shares"])] if "policy" in r else [])
        width = 0.8 / len(bars)
        for k, (label, values) in enumerate(bars):
            ax.bar(x + k * width, values, width, label=label)
        ax.set_xticks(x + 0.4 - width / 2, [g.split(":", 1)[1] if g.startswith("block") else g.removeprefix("kind:") for g in r["groups"]],
                      fontsize=8)
        ax.set_ylabel("share of params")
        ax.set_title(f"{r['task']}: kinds, then blocks 0-{sum(g.startswith('block') for g in r['groups']) - 1}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "spending.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "mrpc", "stsb"])
    parser.add_argument("--policy", action="append", default=[], metavar="TASK=POLICY", help="a PPO policy whose map on TASK to add")
    parser.add_argument("--top", type=float, default=0.1, help="the share of a table's maps, by score, that counts as its best")
    parser.add_argument("--out", default="runs/spending")
    args = parser.parse_args()
    policies = dict(item.split("=", 1) for item in args.policy)
    for task, policy in policies.items():
        if not Path(policy).is_file():
            parser.error(f"--policy {task}={policy}: no such file")
    results = [analyse(task, policies.get(task), args.top) for task in args.tasks]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spending.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(report(results, args.top)))
    plot(results, out)
    print(f"wrote {out / 'spending.json'}, {out / 'spending.png'}")


if __name__ == "__main__":
    main()

"""Every agent at equal parameters on three cheap environments: which one to pick at which budget.

    python benchmarks/agents.py                          # 10 seeds, up to 512 evaluations, about 15 minutes on 2 cores
    python benchmarks/agents.py --seeds 0 1 2 --max-budget 128 --agents random tpe

Environments, all at ``param_budget=0.4`` (reward = metric at 40 % of uniform-16's parameters):
(a) ``fake``: the closed-form landscape, seed s; (b) ``surrogate``: the shipped table fitted to
real MiniLM x SST-2 elastic scores; (c) ``fake-unseen``: a fake landscape of another size (6
blocks) and seeds never used in development (1000 + s). Each agent runs once per environment and
seed with the largest budget; its best reward at a smaller budget is the best of its first
evaluations (random search and TPE make the same first choices whatever their budget, and PPO's
schedule does not depend on it). Baselines (uniform, presets, spectral) are fixed maps, run once.

Prints the median and interquartile range of the best reward per agent, environment and budget,
and a Wilcoxon signed-rank test (paired by seed) of PPO against random search and against TPE;
plots best-so-far against evaluations (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

ENVS = {
    "fake": lambda s: ("RankSearch-fake-v0", {"seed": s, "param_budget": 0.4}),
    "surrogate": lambda s: ("RankSearch-minilm-sst2-surrogate-v0", {"seed": s, "param_budget": 0.4}),
    "fake-unseen": lambda s: ("RankSearch-fake-v0", {"seed": 1000 + s, "fake_layers": 6, "param_budget": 0.4}),
}


def best_so_far(run: Path) -> np.ndarray:
    with (run / "steps.csv").open() as f:
        scores = [float(r["score"]) if r["score"] else -np.inf for r in csv.DictReader(f)]
    return np.maximum.accumulate(scores)


def run_agent(agent: str, env_id: str, env_kwargs: dict, seed: int, budget: int, out: Path) -> np.ndarray:
    from rankgym.agents import baselines, ppo, random_search, tpe

    common = dict(env_id=env_id, budget=budget, seed=seed, out=str(out), env_kwargs=env_kwargs, promote=0)
    if agent in ("uniform", "presets", "spectral"):
        baselines.run(baselines.Args(**common, family=agent))
    else:
        module = {"ppo": ppo, "random": random_search, "tpe": tpe}[agent]
        module.run(module.Args(**common))
    return best_so_far(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--agents", nargs="+", default=["random", "tpe", "ppo", "uniform", "presets", "spectral"])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--out", default="runs/agents")
    args = parser.parse_args()

    from scipy.stats import wilcoxon
    from tqdm.auto import tqdm

    import rankgym  # noqa: F401

    top = max(args.budgets)
    curves: dict[tuple[str, str], list[np.ndarray]] = {}
    jobs = [(e, a, s) for e in args.envs for a in args.agents for s in args.seeds]
    with tempfile.TemporaryDirectory() as tmp, tqdm(jobs, desc="runs", unit="run") as bar:
        for env, agent, seed in bar:
            env_id, kwargs = ENVS[env](seed)
            curve = run_agent(agent, env_id, kwargs, seed, top, Path(tmp) / f"{env}-{agent}-{seed}")
            curves.setdefault((env, agent), []).append(curve)

    def best_at(curve: np.ndarray, n: int) -> float:
        return float(curve[min(n, len(curve)) - 1])

    table = []
    print(f"\nbest reward (metric at param_budget 0.4), median [IQR] over seeds {args.seeds}")
    for env in args.envs:
        print(f"\n{env}")
        for agent in args.agents:
            row = {"env": env, "agent": agent}
            cells = []
            for n in args.budgets:
                values = [best_at(c, n) for c in curves[(env, agent)]]
                q1, med, q3 = np.percentile(values, [25, 50, 75])
                row[n] = {"median": med, "q1": q1, "q3": q3, "values": values}
                cells.append(f"{n:4d}: {med:.4f} [{q1:.4f}, {q3:.4f}]")
            table.append(row)
            print(f"  {agent:9s} " + "   ".join(cells))
        for other in ("random", "tpe"):
            if "ppo" in args.agents and other in args.agents and len(args.seeds) >= 5:
                for n in args.budgets:
                    a = [best_at(c, n) for c in curves[(env, "ppo")]]
                    b = [best_at(c, n) for c in curves[(env, other)]]
                    p = wilcoxon(a, b).pvalue if any(x != y for x, y in zip(a, b)) else 1.0
                    print(f"  ppo vs {other:6s} at {n:4d}: median difference {statistics.median(np.subtract(a, b)):+.4f}, "
                          f"Wilcoxon p = {p:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents.json").write_text(json.dumps(table, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.envs), figsize=(5 * len(args.envs), 4), squeeze=False)
    for ax, env in zip(axes[0], args.envs):
        for agent in args.agents:
            runs = curves[(env, agent)]
            length = min(len(c) for c in runs)
            median = np.median(np.stack([c[:length] for c in runs]), axis=0)
            ax.plot(np.arange(1, length + 1), median, label=agent)
        ax.set(xscale="log", xlabel="evaluations", ylabel="best reward (median over seeds)", title=env)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "agents.png", dpi=120)
    print(f"\nwrote {out / 'agents.json'} and {out / 'agents.png'}")


if __name__ == "__main__":
    main()

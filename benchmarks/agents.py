"""Every agent at equal parameters on three cheap environments: which one to pick at which budget.

    python benchmarks/agents.py                          # 10 seeds, up to 512 evaluations
    python benchmarks/agents.py --seeds 0 1 2 --budgets 32 128 --agents random tpe
    python benchmarks/agents.py --envs --held-out cola=runs/ppo-no-cola.zip --agents random tpe ppo-fold ppo-scratch uniform prilora

Environments, all at ``param_budget=0.4`` (reward = metric at 40 % of uniform-16's parameters):
(a) ``fake``: the calibrated fake (MiniLM's shape, fitted to real MiniLM x SST-2 scores; noise and
collapses on), seed s; (b) ``surrogate``: the shipped table fitted to real MiniLM x SST-2 elastic
scores; (c) ``fake-unseen``: the calibrated fake at a size (10 blocks, width 512) and seeds
(1000 + s) used neither in development nor in pretraining the shipped ``ppo`` policy. Each agent
runs once per environment and seed with the largest budget; its best reward at a smaller budget
is the best of its first evaluations (random search and TPE make the same first choices whatever
their budget, and the PPO agents' schedules do not depend on it). Baselines (uniform, presets,
spectral, prilora) are fixed maps, run once. ``ppo`` is the AMC-style agent with the shipped
pretrained policy, ``ppo-scratch`` the same without pretraining, ``ppo-steps`` the step-wise agent
(grow/keep/shrink every module per step).

The figure of merit is the quality of the map a search answers with after n evaluations (its
best-scored map so far): on the fake envs that map's noise-free metric, since with noise on, the
best reward mostly measures how lucky the luckiest draw was (it exceeds the optimum); on the
surrogate (deterministic) its score. Prints its median and interquartile range per agent,
environment and budget, the exact optimum of the fake envs at the budget, and a Wilcoxon signed-rank test (paired by
seed) of each PPO agent against random search and against TPE; plots best-so-far against
evaluations (``--out``).

Leave-one-task-out (``--held-out TASK=POLICY``, repeatable): the env ``held-out-TASK`` is the
shipped surrogate of TASK (``RankSearch-minilm-TASK-surrogate-v0``, at the budget its table was
recorded at) and ``ppo-fold`` is the PPO agent starting from POLICY, a policy pretrained without
TASK (``python agents/ppo.py --pretrain POLICY --pretrain-surrogates`` with the other tasks).
``ppo-fold`` runs on held-out envs only; the uniform and PRILoRA rows are the free heuristics
there (EVA needs the model, which a surrogate has not).
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
    "fake": lambda s: ("RankSearch-fake-calibrated-v0", {"seed": s, "param_budget": 0.4}),
    "surrogate": lambda s: ("RankSearch-minilm-sst2-surrogate-v0", {"seed": s, "param_budget": 0.4}),
    "fake-unseen": lambda s: ("RankSearch-fake-calibrated-v0", {"seed": 1000 + s, "fake_layers": 10, "fake_hidden": 512, "param_budget": 0.4}),
}
PPO_AGENTS = ("ppo", "ppo-fold", "ppo-scratch", "ppo-steps")
HELD_OUT = "held-out-"  # the prefix of a leave-one-task-out env's name


def optimum(env_id: str, kwargs: dict) -> float | None:
    """The noise-free best metric within the budget (fake envs only)."""
    import gymnasium as gym

    from rankgym.budget import rank_grid

    env = gym.make(env_id, **kwargs).unwrapped
    if env.evaluator.name != "fake":
        return None
    return env.evaluator.optimum(0.0, rank_grid(env.min_rank, env.max_rank, env.rank_step), env.reference_params, env.budget)[1]


def answer_quality(run: Path, env_id: str, kwargs: dict) -> np.ndarray:
    """After each evaluation, the quality of the map the search would answer with (its best-scored one so far):
    on the fake envs its noise-free metric (a lucky noise draw is not a better map), on the surrogate its score."""
    import gymnasium as gym

    with (run / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    scores = np.array([float(r["score"]) if r["score"] else -np.inf for r in rows])
    best = [int(i) for i in np.maximum.accumulate(np.where(scores == np.maximum.accumulate(scores), np.arange(len(scores)), 0))]
    env = gym.make(env_id, **kwargs).unwrapped
    if env.evaluator.name != "fake":
        return scores[best]
    truth = {i: env.evaluator.metric_of([json.loads(rows[i]["rank_map"]).get(n, 0) for n in env.names]) for i in set(best)}
    return np.array([truth[i] for i in best])


def run_agent(agent: str, env_id: str, env_kwargs: dict, seed: int, budget: int, out: Path, policy: str | None = None) -> np.ndarray:
    """One search (``policy``: the fold's pretrained policy, for ``ppo-fold``); returns its answer-quality curve."""
    from rankgym.agents import baselines, ppo, ppo_steps, random_search, tpe

    common = dict(env_id=env_id, budget=budget, seed=seed, out=str(out), env_kwargs=env_kwargs, promote=0)
    if agent in ("uniform", "presets", "spectral", "prilora"):
        baselines.run(baselines.Args(**common, family=agent))
    elif agent in ("ppo", "ppo-scratch", "ppo-fold"):
        ppo.run(ppo.Args(**common, pretrained={"ppo": "shipped", "ppo-scratch": "none", "ppo-fold": policy}[agent]))
    else:
        module = {"ppo-steps": ppo_steps, "random": random_search, "tpe": tpe}[agent]
        module.run(module.Args(**common))
    return answer_quality(out, env_id, env_kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--budgets", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--agents", nargs="+", default=["random", "tpe", "ppo", "ppo-scratch", "ppo-steps", "uniform", "presets", "spectral", "prilora"])
    parser.add_argument("--envs", nargs="*", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--held-out", nargs="+", default=[], metavar="TASK=POLICY",
                        help="a task's shipped surrogate as an env, searched by ppo-fold from POLICY (pretrained without TASK)")
    parser.add_argument("--out", default="runs/agents")
    args = parser.parse_args()
    from rankgym.registry import SURROGATES

    policies = dict(item.split("=", 1) for item in args.held_out)
    envs = dict(ENVS)  # the named envs, then the held-out tasks'
    for task, policy in policies.items():  # at the budget its table was recorded at, else the others' 0.4
        budget = {} if SURROGATES.get(task, {}).get("param_budget") else {"param_budget": 0.4}
        envs[HELD_OUT + task] = lambda s, task=task, budget=budget: (f"RankSearch-minilm-{task}-surrogate-v0", {"seed": s, **budget})
        if not Path(policy).is_file():
            parser.error(f"no policy at {policy}; pretrain one without {task}: python agents/ppo.py --pretrain {policy} --pretrain-surrogates ...")
    args.envs += [HELD_OUT + task for task in policies]

    from scipy.stats import wilcoxon
    from tqdm.auto import tqdm

    import rankgym  # noqa: F401

    top = max(args.budgets)
    curves: dict[tuple[str, str], list[np.ndarray]] = {}
    def agents_of(env: str) -> list[str]:
        return [a for a in args.agents if a != "ppo-fold" or env.startswith(HELD_OUT)]

    jobs = [(e, a, s) for e in args.envs for a in agents_of(e) for s in args.seeds]
    with tempfile.TemporaryDirectory() as tmp, tqdm(jobs, desc="runs", unit="run") as bar:
        for env, agent, seed in bar:
            env_id, kwargs = envs[env](seed)
            policy = policies.get(env.removeprefix(HELD_OUT))
            curve = run_agent(agent, env_id, kwargs, seed, top, Path(tmp) / f"{env}-{agent}-{seed}", policy)
            curves.setdefault((env, agent), []).append(curve)

    def best_at(curve: np.ndarray, n: int) -> float:
        return float(curve[min(n, len(curve)) - 1])

    table = []
    print(f"\nquality of the answer (metric at param_budget 0.4, a held-out table's own budget; noise-free on the fake envs), "
          f"median [IQR] over seeds {args.seeds}")
    for env in args.envs:
        best = [optimum(*envs[env](s)) for s in args.seeds]
        print(f"\n{env}" + (f"  (optimum at the budget: median {np.median(best):.4f})" if best[0] is not None else ""))
        for agent in agents_of(env):
            row = {"env": env, "agent": agent}
            cells = []
            for n in args.budgets:
                values = [best_at(c, n) for c in curves[(env, agent)]]
                q1, med, q3 = np.percentile(values, [25, 50, 75])
                row[n] = {"median": med, "q1": q1, "q3": q3, "values": values}
                cells.append(f"{n:4d}: {med:.4f} [{q1:.4f}, {q3:.4f}]")
            table.append(row)
            print(f"  {agent:9s} " + "   ".join(cells))
        for agent, other in ((a, o) for a in PPO_AGENTS for o in ("random", "tpe")):
            if agent in agents_of(env) and other in agents_of(env) and len(args.seeds) >= 5:
                for n in args.budgets:
                    a = [best_at(c, n) for c in curves[(env, agent)]]
                    b = [best_at(c, n) for c in curves[(env, other)]]
                    p = wilcoxon(a, b).pvalue if any(x != y for x, y in zip(a, b)) else 1.0
                    print(f"  {agent:11s} vs {other:6s} at {n:4d}: median difference {statistics.median(np.subtract(a, b)):+.4f}, "
                          f"Wilcoxon p = {p:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agents.json").write_text(json.dumps(table, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.envs), figsize=(5 * len(args.envs), 4), squeeze=False)
    for ax, env in zip(axes[0], args.envs):
        for agent in agents_of(env):
            runs = curves[(env, agent)]
            length = min(len(c) for c in runs)
            median = np.median(np.stack([c[:length] for c in runs]), axis=0)
            ax.plot(np.arange(1, length + 1), median, label=agent)
        ax.set(xscale="log", xlabel="evaluations", ylabel="answer quality (median over seeds)", title=env)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "agents.png", dpi=120)
    print(f"\nwrote {out / 'agents.json'} and {out / 'agents.png'}")


if __name__ == "__main__":
    main()

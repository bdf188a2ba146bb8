"""How far can a cheap score be trusted? Cheap scores against full fine-tunes on a fixed map list.

    python benchmarks/fidelity.py                                   # MiniLM x SST-2, env budget vs 8,192 examples
    python benchmarks/fidelity.py --budget 1024 --budget 2048 --seeds 0 1 2 --workers 2
    python benchmarks/fidelity.py --maps uniform-2 uniform-8 --no-full --lr 1e-3 --alpha-mode ratio --alpha 1

Every map of :func:`fidelity_maps` is scored by the ``finetune`` evaluator at each cheap budget on
the score split (held out of training, as a search scores) and by a full fine-tune validated on
the validation split (as promotion reports), each with every seed. It prints, per budget, Kendall's
tau and Spearman's rho between the cheap score (the mean over seeds, and single seeds) and the full
fine-tunes' mean, the seed-to-seed standard deviation and the seconds per evaluation, then plots
cheap against full. Every evaluation goes to a store (``--store``), so a killed run resumes and a
rerun with more seeds or budgets only trains what is new.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

COLLAPSE_MARGIN = 0.01  # a score within a point of always answering the majority class is a collapse


def fidelity_maps(modules, seed: int = 0) -> list[tuple[str, list[int]]]:
    """The fixed list: uniform ranks, presets, kind-only, depth-only, sparse and random maps."""
    from rankgym.strategies import preset_ranks, uniform_ranks

    depth = max(m.layer for m in modules) + 1
    kind = lambda kinds, r: [r if m.kind in kinds else 0 for m in modules]  # noqa: E731
    blocks = lambda lo, hi, r: [r if lo <= m.layer < hi else 0 for m in modules]  # noqa: E731
    rng = np.random.default_rng(seed)
    grid = np.arange(0, 17, 2)
    maps = [(f"uniform-{r}", uniform_ranks(modules, r)) for r in (2, 4, 8, 16)]
    maps += [(f"preset-{level}", preset_ranks(modules, level)) for level in ("low", "medium")]
    maps += [
        ("qv-8", kind({"query", "value", "qkv"}, 8)),
        ("qv-16", kind({"query", "value", "qkv"}, 16)),
        ("attention-8", kind({"query", "key", "value", "qkv", "attn_out"}, 8)),
        ("mlp-8", kind({"mlp_in", "mlp_out"}, 8)),
        ("shallow-16", blocks(0, depth // 2, 16)),
        ("deep-16", blocks(depth // 2, depth, 16)),
        ("growing-with-depth", [2 * (m.layer + 1) for m in modules]),
    ]
    maps += [(f"random-{i}", [int(r) for r in rng.choice(grid, size=len(modules))]) for i in range(3)]
    maps += [("random-sparse", [int(r) if rng.random() < 0.5 else 0 for r in rng.choice(grid[1:], size=len(modules))])]
    return maps


@dataclass(frozen=True)
class Job:
    """One evaluator (a budget and a seed) and the maps it scores."""

    backbone: str
    task: str
    train_examples: int
    seed: int
    score_on: str
    lr: float
    alpha: float
    alpha_mode: str
    rslora: bool
    max_grad_norm: float | None
    store: str
    maps: tuple[tuple[str, tuple[int, ...]], ...]
    threads: int


def run_job(job: Job) -> list[dict]:
    """Score ``job.maps`` with one resident evaluator, answering from the store where possible."""
    import torch

    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.store import EvaluationStore
    from rankgym.training import Recipe

    torch.set_num_threads(job.threads)
    recipe = Recipe(train_examples=job.train_examples, lr=job.lr, max_grad_norm=job.max_grad_norm)
    evaluator = FinetuneEvaluator(job.backbone, job.task, recipe, job.seed, "cpu", max_rank=64, alpha=job.alpha,
                                  alpha_mode=job.alpha_mode, rslora=job.rslora, score_on=job.score_on)
    store = EvaluationStore(job.store)
    context = store.register(evaluator.identity(), evaluator.modules)
    template = evaluator.template()
    labels = evaluator.val_set.labels
    majority = float(max((labels == c).float().mean() for c in labels.unique()))
    rows = []
    for label, ranks in job.maps:
        rank_map = template.replace({m.name: r for m, r in zip(evaluator.modules, ranks)})
        evaluation = store.get(context, rank_map)
        if evaluation is None:
            evaluation = evaluator.evaluate(rank_map)
            store.put(context, rank_map, evaluation)
        rows.append(dict(map=label, examples=job.train_examples, seed=job.seed, split=job.score_on, metric=evaluation.metric,
                         seconds=evaluation.seconds, params=evaluation.params, majority=majority,
                         cache_hit=evaluation.cache_hit))
        print(f"  {label:20s} {job.train_examples:5d} ex seed {job.seed} on {job.score_on:10s} {evaluation.metric:.4f}"
              f"{' (stored)' if evaluation.cache_hit else f' {evaluation.seconds:.1f} s'}", flush=True)
    return rows


def summarise(rows: list[dict], budgets: list[int], full: int | None, seeds: list[int]) -> dict:
    """Per-map means and spreads, and tau / rho of each cheap budget against the full fine-tune."""
    from scipy.stats import kendalltau, spearmanr

    def values(label, examples, split):
        return [r["metric"] for r in rows if r["map"] == label and r["examples"] == examples and r["split"] == split]

    labels = list(dict.fromkeys(r["map"] for r in rows))
    table = {}
    for label in labels:
        entry = {}
        for examples, split in [(b, "score") for b in budgets] + ([(full, "validation")] if full else []):
            v = values(label, examples, split)
            entry[f"{split}@{examples}"] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
        table[label] = entry
    out = {"maps": table, "budgets": {}}
    collapses = [r for r in rows if r["metric"] <= r["majority"] + COLLAPSE_MARGIN]
    out["collapses"] = [f"{r['map']} {r['examples']} ex seed {r['seed']}: {r['metric']:.3f}" for r in collapses]
    for b in budgets:
        key = f"score@{b}"
        stats = {
            "seconds_per_evaluation": statistics.fmean(r["seconds"] for r in rows if r["examples"] == b and r["split"] == "score"),
            "seed_std_mean": statistics.fmean(table[m][key]["std"] for m in labels),
            "seed_std_uniform_max": max(table[m][key]["std"] for m in labels if m.startswith("uniform")),
        }
        if full:
            reference = [table[m][f"validation@{full}"]["mean"] for m in labels]
            cheap = [table[m][key]["mean"] for m in labels]
            stats["tau_mean"] = float(kendalltau(cheap, reference).statistic)
            stats["rho_mean"] = float(spearmanr(cheap, reference).statistic)
            stats["tau_single_seeds"] = [float(kendalltau([table[m][key]["values"][i] for m in labels], reference).statistic)
                                         for i in range(len(seeds))]
        out["budgets"][b] = stats
    if full:
        out["full"] = {
            "examples": full,
            "seconds_per_evaluation": statistics.fmean(r["seconds"] for r in rows if r["split"] == "validation"),
            "seed_std_mean": statistics.fmean(table[m][f"validation@{full}"]["std"] for m in labels),
        }
    return out


def plot(summary: dict, full: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(summary["budgets"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4.5), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        for label, entry in summary["maps"].items():
            x, y = entry[f"score@{b}"], entry[f"validation@{full}"]
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", ms=4, capsize=2)
            ax.annotate(label, (x["mean"], y["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        stats = summary["budgets"][b]
        ax.set_title(f"{b} examples: tau {stats['tau_mean']:.2f}, rho {stats['rho_mean']:.2f}")
        ax.set_xlabel("cheap score (score split), mean ± std over seeds")
        ax.set_ylabel(f"full fine-tune ({full} examples), validation")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--budget", type=int, action="append", help="cheap training examples (repeatable; default the env's)")
    parser.add_argument("--full", type=int, default=8192, help="training examples of the reference fine-tune")
    parser.add_argument("--no-full", action="store_true", help="cheap scores only (a recipe sweep)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--maps", nargs="+", help="only these labels of the fixed list")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--alpha-mode", choices=("fixed", "ratio"))
    parser.add_argument("--rslora", type=int, choices=(0, 1))
    parser.add_argument("--max-grad-norm", type=float, help="0 turns clipping off")
    parser.add_argument("--workers", type=int, default=1, help="processes (each with --threads torch threads)")
    parser.add_argument("--chunk", type=int, default=4, help="maps per job (one model load each)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--store", default="runs/fidelity/store.sqlite")
    parser.add_argument("--out", default="runs/fidelity")
    args = parser.parse_args()

    import rankgym  # noqa: F401
    from rankgym.backbones import get_backbone, load_backbone, module_infos
    from rankgym.registry import BACKBONE_DEFAULTS, EnvConfig
    from rankgym.recipe import ALPHA_POLICY, Recipe

    defaults = {**EnvConfig().to_dict(), **BACKBONE_DEFAULTS.get(args.backbone, {})}
    budgets = args.budget or [defaults["train_examples"]]
    recipe = dict(
        lr=args.lr or defaults["lr"],
        alpha=args.alpha if args.alpha is not None else ALPHA_POLICY["alpha"],
        alpha_mode=args.alpha_mode or ALPHA_POLICY["alpha_mode"],
        rslora=bool(args.rslora) if args.rslora is not None else ALPHA_POLICY["rslora"],
        max_grad_norm=(args.max_grad_norm or None) if args.max_grad_norm is not None else Recipe().max_grad_norm,
    )
    model, _ = load_backbone(args.backbone)
    maps = fidelity_maps(module_infos(model, get_backbone(args.backbone)))
    if args.maps:
        unknown = set(args.maps) - {label for label, _ in maps}
        if unknown:
            parser.error(f"unknown map labels {sorted(unknown)}; the list has {[label for label, _ in maps]}")
        maps = [(label, ranks) for label, ranks in maps if label in args.maps]
    del model
    full = None if args.no_full else args.full
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    frozen = tuple((label, tuple(ranks)) for label, ranks in maps)
    # jobs of a few maps each keep the workers evenly busy; the long full fine-tunes go first
    chunks = [frozen[i : i + args.chunk] for i in range(0, len(frozen), args.chunk)]
    base = Job(args.backbone, args.task, 0, 0, "score", store=args.store, maps=(), threads=args.threads, **recipe)
    jobs = [replace(base, train_examples=full, seed=s, score_on="validation", maps=c) for s in args.seeds for c in chunks] if full else []
    jobs += [replace(base, train_examples=b, seed=s, maps=c) for b in budgets for s in args.seeds for c in chunks]
    print(f"{len(maps)} maps in {len(jobs)} jobs; recipe {recipe}", flush=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = [row for result in pool.map(run_job, jobs) for row in result]
    else:
        rows = [row for job in jobs for row in run_job(job)]

    summary = summarise(rows, budgets, full, args.seeds)
    summary["recipe"] = recipe
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = f"{'map':20s} " + " ".join(f"{k:>16s}" for k in next(iter(summary['maps'].values())))
    print("\n" + header)
    for label, entry in summary["maps"].items():
        print(f"{label:20s} " + " ".join(f"{v['mean']:.3f} ± {v['std']:.3f}".rjust(16) for v in entry.values()))
    for b, stats in summary["budgets"].items():
        line = f"\n{b} examples: {stats['seconds_per_evaluation']:.1f} s per evaluation, seed std {stats['seed_std_mean']:.3f} " \
               f"(uniform maps at most {stats['seed_std_uniform_max']:.3f})"
        if full:
            line += f"; tau {stats['tau_mean']:.2f} (single seeds {', '.join(f'{t:.2f}' for t in stats['tau_single_seeds'])}), " \
                    f"rho {stats['rho_mean']:.2f} against the {full}-example mean"
        print(line)
    if full:
        print(f"full fine-tune: {summary['full']['seconds_per_evaluation']:.1f} s per evaluation, seed std {summary['full']['seed_std_mean']:.3f}")
        plot(summary, full, out / "fidelity.png")
    print(f"collapses (within {COLLAPSE_MARGIN:.0%} of the majority class): {summary['collapses'] or 'none'}")
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    print(f"wrote {out / 'fidelity.json'}" + (f" and {out / 'fidelity.png'}" if full else ""))


if __name__ == "__main__":
    main()

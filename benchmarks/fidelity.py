"""How far can a cheap score be trusted? Cheap scores against full fine-tunes on a fixed map list.

    python benchmarks/fidelity.py                                   # MiniLM x SST-2, env budget vs 8,192 examples
    python benchmarks/fidelity.py --budget 1024 --budget 2048 --elastic 16384 --workers 2 --threads 1
    python benchmarks/fidelity.py --maps uniform-2 uniform-8 --no-full --lr 1e-3      # a recipe sweep
    python benchmarks/fidelity.py --task cola --elastic 16384 --examples-curve 0.0625 0.125 0.25 0.5 --workers 2 --threads 1
    python benchmarks/fidelity.py --task mrpc --elastic 16384 --early-stop 0.95     # and the values an early-stopping search gets

Every map of :func:`fidelity_maps` is scored by each cheap scorer on the score split (held out of
training, as a search scores): the ``finetune`` evaluator at each ``--budget``, and the ``elastic``
evaluator trained once on ``--elastic`` examples per seed. The reference is a full fine-tune
validated on the validation split (as promotion reports). The reference and the elastic adapter
train with the task's full recipe (its epochs and max length), the cheap fine-tunes one pass. Every
scorer and the reference run with every seed. It prints, per scorer, Kendall's tau and Spearman's
rho between the cheap score (the mean over seeds, and single seeds) and the reference mean, the
seed-to-seed standard deviation and the seconds per evaluation, then plots cheap against full. With
``--early-stop CONFIDENCE`` each elastic adapter also scores the list as a search with
``early_stop`` does (scorer ``stop@N``): in the list's order, each map's scoring stopping once it
cannot reach the best map before it, the value of a stopped map being the estimate the agent gets;
its tau says what stopping costs the ranking, its share read what it saves. With
``--examples-curve`` it also reads each elastic adapter's per-example results and prints tau of the
task metric and of minus the mean loss (a continuous statistic) on random parts of the score split:
how many examples a ranking needs. Every evaluation goes to a store (``--store``), and elastic
adapters are saved beside it, so a killed run resumes and a rerun with more seeds or scorers only
computes what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

COLLAPSE_MARGIN = 0.01  # a score within a point of the majority class's constant answer is a collapse
MAX_RANK = 16  # the env's max_rank: every map of the list fits the elastic adapter


def fidelity_maps(modules, seed: int = 0) -> list[tuple[str, list[int]]]:
    """The fixed list: uniform ranks, presets, kind-only, depth-only, sparse and random maps."""
    from rankgym.strategies import preset_ranks, uniform_ranks

    depth = max(m.layer for m in modules) + 1
    kind = lambda kinds, r: [r if m.kind in kinds else 0 for m in modules]  # noqa: E731
    blocks = lambda lo, hi, r: [r if lo <= m.layer < hi else 0 for m in modules]  # noqa: E731
    rng = np.random.default_rng(seed)
    grid = np.arange(0, MAX_RANK + 1, 2)
    maps = [(f"uniform-{r}", uniform_ranks(modules, r)) for r in (2, 4, 8, 16)]
    maps += [("preset-low", preset_ranks(modules, "low")),
             ("preset-medium-16", [min(r, MAX_RANK) for r in preset_ranks(modules, "medium")])]
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
    """One evaluator (a scorer and a seed) and the maps it scores."""

    scorer: str  # "score@N" (finetune), "elastic@N" or "validation@N" (the reference)
    backbone: str
    task: str
    seed: int
    lr: float
    alpha: float
    alpha_mode: str
    rslora: bool
    max_grad_norm: float | None
    store: str
    maps: tuple[tuple[str, tuple[int, ...]], ...]
    threads: int
    group_draws: float = 0.0  # the elastic adapter's share of group draws (ElasticEvaluator)
    early_stop: float | None = None  # the confidence of a stop@N scorer's early stop (set on those jobs only)

    @property
    def examples(self) -> int:
        return int(self.scorer.split("@")[1])


def make_evaluator(job: Job):
    """The evaluator of ``job``'s scorer and seed: the task's full recipe (its epochs and max length,
    as promotion and the env's elastic adapter train) on ``job.examples``; the cheap fine-tunes one
    pass at the env's rate."""
    import torch

    from rankgym.evaluators.elastic import ElasticEvaluator
    from rankgym.evaluators.finetune import FinetuneEvaluator
    from rankgym.recipe import full_recipe

    torch.set_num_threads(job.threads)
    if job.scorer.startswith("score"):
        recipe = full_recipe(job.task, train_examples=job.examples, epochs=1, lr=job.lr)
    else:
        recipe = full_recipe(job.task, train_examples=job.examples)
    recipe = replace(recipe, max_grad_norm=job.max_grad_norm)  # None is a value here: no clipping
    common = dict(device="cpu", max_rank=MAX_RANK, alpha=job.alpha, alpha_mode=job.alpha_mode, rslora=job.rslora)
    if job.scorer.startswith(("elastic", "stop")):  # stop@N: the same adapter (the same file), scored stopping early
        return ElasticEvaluator(job.backbone, job.task, recipe, job.seed, group_draws=job.group_draws, early_stop=job.early_stop,
                                cache_dir=Path(job.store).parent / "elastic", **common)
    return FinetuneEvaluator(job.backbone, job.task, recipe, job.seed, score_on=job.scorer.split("@")[0], **common)


def run_job(job: Job) -> list[dict]:
    """Score ``job.maps`` with one resident evaluator, answering from the store where possible."""
    from rankgym.evaluators.service import EvaluationService
    from rankgym.metrics import compute
    from rankgym.store import EvaluationStore

    evaluator = make_evaluator(job)
    service = EvaluationService(evaluator, EvaluationStore(job.store))
    template = evaluator.template()
    labels = evaluator.val_set.labels
    constant = None  # the metric of always answering the majority class (accuracy: its share; Matthews: 0); regression: none
    if not labels.is_floating_point():
        constant = compute(evaluator.data.metric, np.full(len(labels), int(labels.mode().values)), labels.numpy())
    rows = []
    for label, ranks in job.maps:
        rank_map = template.replace({m.name: r for m, r in zip(evaluator.modules, ranks)})
        [evaluation] = service.evaluate([rank_map])
        rows.append(dict(map=label, scorer=job.scorer, seed=job.seed, metric=evaluation.metric, seconds=evaluation.seconds,
                         params=evaluation.params, constant=constant, training_seconds=getattr(evaluator, "training_seconds", None),
                         fraction=evaluation.fraction))
        print(f"  {label:20s} {job.scorer:16s} seed {job.seed} {evaluation.metric:.4f}"
              f"{' (stored)' if evaluation.cache_hit else f' {evaluation.seconds:.1f} s'}"
              f"{f' stopped at {evaluation.fraction:.0%}' if evaluation.stopped else ''}", flush=True)
    return rows


def summarise(rows: list[dict], scorers: list[str], reference: str | None) -> dict:
    """Per-map means and spreads, and tau / rho of each cheap scorer against the reference."""
    from scipy.stats import kendalltau, spearmanr

    labels = list(dict.fromkeys(r["map"] for r in rows))
    table = {}
    for label in labels:
        entry = {}
        for scorer in scorers + ([reference] if reference else []):
            v = [r["metric"] for r in rows if r["map"] == label and r["scorer"] == scorer]
            entry[scorer] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}
        table[label] = entry
    collapses = [r for r in rows if r["constant"] is not None and r["metric"] <= r["constant"] + COLLAPSE_MARGIN]
    out = {"maps": table, "scorers": {},
           "collapses": [f"{r['map']} {r['scorer']} seed {r['seed']}: {r['metric']:.3f}" for r in collapses]}
    for scorer in scorers + ([reference] if reference else []):
        mine = [r for r in rows if r["scorer"] == scorer]
        stats = {
            "seconds_per_evaluation": statistics.fmean(r["seconds"] for r in mine),
            "seed_std_mean": statistics.fmean(table[m][scorer]["std"] for m in labels),
            "seed_std_uniform_max": max(table[m][scorer]["std"] for m in labels if m.startswith("uniform")),
        }
        training = {r["seed"]: r["training_seconds"] for r in mine if r["training_seconds"]}
        if training:
            stats["training_seconds"] = training
        if scorer.startswith("stop"):
            stats["share_read"] = statistics.fmean(r["fraction"] for r in mine)
            stats["stopped"] = sum(r["fraction"] < 1 for r in mine)
        if reference and scorer != reference:
            target = [table[m][reference]["mean"] for m in labels]
            cheap = [table[m][scorer]["mean"] for m in labels]
            stats["tau_mean"] = float(kendalltau(cheap, target).statistic)
            stats["rho_mean"] = float(spearmanr(cheap, target).statistic)
            seeds = len(table[labels[0]][scorer]["values"])
            stats["tau_single_seeds"] = [float(kendalltau([table[m][scorer]["values"][i] for m in labels], target).statistic)
                                         for i in range(seeds)]
        out["scorers"][scorer] = stats
    return out


CURVE_DRAWS = 50  # random subsets per size: the spread of tau over them is what one search's subset would see


def example_curve(job: Job, target: dict[str, float], fractions: list[float]) -> dict:
    """Kendall's tau against the reference means (``target``, per map label) of two statistics read
    on a random subset of the score split, per subset size: the task metric and the continuous
    per-example statistic (minus the mean loss: minus the log-probability of the gold label, or the
    squared error). Every map is read on the same subset, as a paired early stop reads them."""
    from scipy.stats import kendalltau

    from rankgym.metrics import compute

    evaluator = make_evaluator(job)
    template = evaluator.template()
    results = {}
    for label, ranks in job.maps:
        rank_map = template.replace({m.name: r for m, r in zip(evaluator.modules, ranks)})
        results[label] = evaluator.example_results(rank_map)
    labels = list(results)
    truth = [target[label] for label in labels]
    gold = evaluator.val_set.labels[: len(results[labels[0]][0])].numpy()
    n, rng = len(gold), np.random.default_rng(job.seed)
    curve = []
    for fraction in fractions:
        size = max(2, round(fraction * n))
        subsets = [np.arange(n)] if size >= n else [rng.choice(n, size, replace=False) for _ in range(CURVE_DRAWS)]
        taus = {"metric": [], "neg_loss": []}
        for sub in subsets:
            metric = [compute(evaluator.data.metric, results[m][0][sub], gold[sub]) for m in labels]
            taus["metric"].append(kendalltau(metric, truth).statistic)
            taus["neg_loss"].append(kendalltau([-results[m][1][sub].mean() for m in labels], truth).statistic)
        curve.append({"fraction": fraction, "examples": int(min(size, n)),
                      **{f"tau_{k}": float(np.nanmean(v)) for k, v in taus.items()},
                      **{f"tau_{k}_std": float(np.nanstd(v)) for k, v in taus.items()}})
    return {"scorer": job.scorer, "seed": job.seed, "metric": evaluator.data.metric, "examples": n, "curve": curve}


def plot_curves(curves: list[dict], reference: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for c in curves:
        x = [p["examples"] for p in c["curve"]]
        for key, style in (("metric", "-o"), ("neg_loss", "--s")):
            y, err = [p[f"tau_{key}"] for p in c["curve"]], [p[f"tau_{key}_std"] for p in c["curve"]]
            name = c["metric"] if key == "metric" else "minus the mean loss"
            ax.errorbar(x, y, yerr=err, fmt=style, ms=4, capsize=2, label=f"{c['scorer']} seed {c['seed']}: {name}")
    ax.set_xscale("log")
    ax.set_xlabel("score-split examples read (random subsets, the same for every map)")
    ax.set_ylabel(f"Kendall's tau against the {reference} mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(summary: dict, scorers: list[str], reference: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scorers), figsize=(5 * len(scorers), 4.5), squeeze=False)
    for ax, scorer in zip(axes[0], scorers):
        for label, entry in summary["maps"].items():
            x, y = entry[scorer], entry[reference]
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", ms=4, capsize=2)
            ax.annotate(label, (x["mean"], y["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        stats = summary["scorers"][scorer]
        ax.set_title(f"{scorer} ({stats['seconds_per_evaluation']:.1f} s): tau {stats['tau_mean']:.2f}, rho {stats['rho_mean']:.2f}",
                     fontsize=9)
        ax.set_xlabel("cheap score on the score split (mean ± std over seeds)")
        ax.set_ylabel(f"full fine-tune ({reference}), mean ± std")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--budget", type=int, action="append", help="finetune training examples (repeatable; default the env's)")
    parser.add_argument("--elastic", type=int, action="append", default=[], help="elastic adapter training examples (repeatable)")
    parser.add_argument("--elastic-groups", type=float, default=0.0, metavar="SHARE",
                        help="share of the elastic adapter's drawn steps that turn whole kinds or blocks off")
    parser.add_argument("--elastic-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the elastic adapters")
    parser.add_argument("--early-stop", type=float, metavar="CONFIDENCE",
                        help="also score with each elastic adapter stopping early at this confidence (scorer stop@N), e.g. 0.95")
    parser.add_argument("--full", type=int, default=8192, help="training examples of the reference fine-tune")
    parser.add_argument("--no-full", action="store_true", help="cheap scores only (a recipe sweep)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--maps", nargs="+", help="only these labels of the fixed list")
    parser.add_argument("--lr", type=float, help="learning rate of the cheap fine-tunes (default: the env's)")
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--alpha-mode", choices=("fixed", "ratio"))
    parser.add_argument("--rslora", type=int, choices=(0, 1))
    parser.add_argument("--max-grad-norm", type=float, help="0 turns clipping off")
    parser.add_argument("--workers", type=int, default=1, help="processes (each with --threads torch threads)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--chunk", type=int, default=4, help="maps per finetune job (one model load each)")
    parser.add_argument("--examples-curve", type=float, nargs="+", metavar="FRACTION",
                        help="also tau of each elastic adapter's metric and minus its mean loss read on these fractions "
                             "of the score split, e.g. 0.0625 0.125 0.25 0.5 (and all of it; needs the reference)")
    parser.add_argument("--store", default="runs/fidelity/store.sqlite")
    parser.add_argument("--out", default="runs/fidelity")
    args = parser.parse_args()

    import rankgym  # noqa: F401
    from rankgym.backbones import get_backbone, load_backbone, module_infos
    from rankgym.recipe import ALPHA_POLICY, Recipe
    from rankgym.registry import BACKBONE_DEFAULTS, EnvConfig

    defaults = {**EnvConfig().to_dict(), **BACKBONE_DEFAULTS.get(args.backbone, {})}
    budgets = args.budget if args.budget is not None else ([] if args.elastic else [defaults["train_examples"]])
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
    reference = None if args.no_full else f"validation@{args.full}"
    scorers = [f"score@{b}" for b in budgets] + [f"elastic@{e}" for e in args.elastic]
    scorers += [f"stop@{e}" for e in args.elastic] if args.early_stop else []
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    frozen = tuple((label, tuple(ranks)) for label, ranks in maps)
    # finetune jobs of a few maps each keep the workers evenly busy; the long full fine-tunes go first
    chunks = [frozen[i : i + args.chunk] for i in range(0, len(frozen), args.chunk)]
    base = Job("", args.backbone, args.task, 0, store=args.store, maps=(), threads=args.threads,
               group_draws=args.elastic_groups, **recipe)
    jobs = [replace(base, scorer=reference, seed=s, maps=c) for s in args.seeds for c in chunks] if reference else []
    jobs += [replace(base, scorer=f"elastic@{e}", seed=s, maps=frozen) for e in args.elastic for s in args.elastic_seeds]
    # one job a seed, the whole list in its order: each stop reads against the maps scored before it
    jobs += [replace(base, scorer=f"stop@{e}", seed=s, maps=frozen, early_stop=args.early_stop)
             for e in args.elastic for s in args.elastic_seeds] if args.early_stop else []
    jobs += [replace(base, scorer=f"score@{b}", seed=s, maps=c) for b in budgets for s in args.seeds for c in chunks]
    print(f"{len(maps)} maps in {len(jobs)} jobs; recipe {recipe}", flush=True)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            rows = [row for result in pool.map(run_job, jobs) for row in result]
    else:
        rows = [row for job in jobs for row in run_job(job)]

    summary = summarise(rows, scorers, reference)
    summary["recipe"] = recipe
    summary["elastic_group_draws"] = args.elastic_groups
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = scorers + ([reference] if reference else [])
    print(f"\n{'map':20s} " + " ".join(f"{c:>16s}" for c in columns))
    for label, entry in summary["maps"].items():
        print(f"{label:20s} " + " ".join(f"{entry[c]['mean']:.3f} ± {entry[c]['std']:.3f}".rjust(16) for c in columns))
    for scorer, stats in summary["scorers"].items():
        line = f"\n{scorer}: {stats['seconds_per_evaluation']:.1f} s per evaluation, seed std {stats['seed_std_mean']:.3f} " \
               f"(uniform maps at most {stats['seed_std_uniform_max']:.3f})"
        if "training_seconds" in stats:
            line += f", trained once in {', '.join(f'{s:.0f} s' for s in stats['training_seconds'].values())}"
        if "share_read" in stats:
            line += f", {stats['share_read']:.0%} of the score split read ({stats['stopped']} scorings stopped)"
        if "tau_mean" in stats:
            line += f"; tau {stats['tau_mean']:.2f} (single seeds {', '.join(f'{t:.2f}' for t in stats['tau_single_seeds'])}), " \
                    f"rho {stats['rho_mean']:.2f} against the {reference} mean"
        print(line)
    if reference and scorers:
        plot(summary, scorers, reference, out / "fidelity.png")
    if args.examples_curve and reference:
        target = {label: entry[reference]["mean"] for label, entry in summary["maps"].items()}
        curves = [example_curve(job, target, sorted({*args.examples_curve, 1.0})) for job in jobs if job.scorer.startswith("elastic")]
        for c in curves:
            print(f"\n{c['scorer']} seed {c['seed']}: tau against the {reference} mean, read on part of the score split "
                  f"({CURVE_DRAWS} random subsets a size, mean ± std)\n{'examples':>9s} {c['metric']:>15s} {'minus the loss':>15s}")
            for point in c["curve"]:
                print(f"{point['examples']:9d} " + " ".join(f"{point[f'tau_{k}']:.2f} ± {point[f'tau_{k}_std']:.2f}".rjust(15)
                                                           for k in ("metric", "neg_loss")))
            full = c["curve"][-1]["tau_metric"]
            enough = [p["examples"] for p in c["curve"] if p["tau_neg_loss"] >= full]
            print(f"  the loss reaches the full {c['metric']} tau ({full:.2f}) " +
                  (f"from {enough[0]} of {c['examples']} examples" if enough else "at none of these sizes"))
        summary["examples_curves"] = curves
        if curves:
            plot_curves(curves, reference, out / "fidelity-examples.png")
    print(f"collapses (within {COLLAPSE_MARGIN} of the metric of always answering the majority class): {summary['collapses'] or 'none'}")
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'fidelity.json'}" + (f" and {out / 'fidelity.png'}" if reference and scorers else ""))


if __name__ == "__main__":
    main()

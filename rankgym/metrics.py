"""The tasks' metrics, from predictions and labels (numpy; every one is higher-is-better).

Written out here rather than imported from scikit-learn / scipy so that an evaluation needs
neither; the tests check each against them.
"""

from __future__ import annotations

import numpy as np

from rankgym.taskdata import TaskError

METRICS = ("accuracy", "matthews", "f1", "pearson", "spearman")
# the metrics a task of each kind may be scored by (``--metric``; a GLUE task's own is in rankgym.tasks.GLUE)
BY_KIND = {"classification": ("accuracy", "matthews", "f1"), "regression": ("pearson", "spearman"), "causal_lm": ("neg_nll", "exact_match")}
BINARY_ONLY = ("matthews", "f1")


def check(metric: str, kind: str, num_labels: int = 2) -> str:
    """``metric`` if a task of ``kind`` (and ``num_labels`` classes) can be scored by it, else a one-line error."""
    allowed = BY_KIND[kind]
    if metric not in allowed:
        raise TaskError(f"metric {metric!r} does not score a {kind.replace('_', '-')} task: use one of {', '.join(allowed)}")
    if metric in BINARY_ONLY and num_labels != 2:
        raise TaskError(f"metric {metric!r} scores two classes; this task has {num_labels}: use accuracy")
    return metric


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(pred == label))


def matthews(pred: np.ndarray, label: np.ndarray) -> float:
    """Matthews correlation of binary predictions (0 when a marginal is constant, as scikit-learn)."""
    tp = float(np.sum((pred == 1) & (label == 1)))
    tn = float(np.sum((pred == 0) & (label == 0)))
    fp = float(np.sum((pred == 1) & (label == 0)))
    fn = float(np.sum((pred == 0) & (label == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def f1(pred: np.ndarray, label: np.ndarray) -> float:
    """F1 of the positive class (label 1), 0 when there is no true positive."""
    tp = float(np.sum((pred == 1) & (label == 1)))
    predicted, actual = float(np.sum(pred == 1)), float(np.sum(label == 1))
    return 2 * tp / (predicted + actual) if tp else 0.0


def pearson(pred: np.ndarray, label: np.ndarray) -> float:
    pred, label = pred.astype(np.float64), label.astype(np.float64)
    if pred.std() == 0 or label.std() == 0:
        return 0.0  # a constant prediction carries no information (scipy would return NaN)
    return float(np.corrcoef(pred, label)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(pred: np.ndarray, label: np.ndarray) -> float:
    return pearson(_ranks(pred), _ranks(label))


def compute(name: str, pred: np.ndarray, label: np.ndarray) -> float:
    """Metric ``name`` of predictions (class ids, or values for regression) against labels."""
    functions = {"accuracy": accuracy, "matthews": matthews, "f1": f1, "pearson": pearson, "spearman": spearman}
    if name not in functions:
        raise ValueError(f"unknown metric {name!r}; one of {', '.join(METRICS)}")
    return functions[name](np.asarray(pred), np.asarray(label))


def paired_upper_bound(name: str, pred: np.ndarray, reference: np.ndarray, label: np.ndarray, confidence: float,
                       resamples: int = 400, seed: int = 0) -> float:
    """Upper end of a one-sided ``confidence`` bound on ``metric(pred) - metric(reference)`` over the
    population these examples are drawn from: the percentile bootstrap of the paired difference (the
    same resampled examples for both). By hand rather than ``scipy.stats.bootstrap`` (what the tests
    check it against) because an evaluation needs no scipy, and a seeded resampling keeps it exact
    to reproduce."""
    idx = np.random.default_rng(seed).integers(0, len(label), size=(resamples, len(label)))
    diffs = [compute(name, pred[i], label[i]) - compute(name, reference[i], label[i]) for i in idx]
    return float(np.quantile(diffs, confidence))


def describe(name: str, value: float) -> str:
    """``value`` of metric ``name`` as a person reads it: a causal LM's ``neg_nll`` (minus the mean NLL
    per response token, so that higher is better like every metric) as the NLL and its perplexity."""
    if name == "neg_nll":
        return f"NLL {-value:.4f} per response token (perplexity {np.exp(-value):.2f})"
    if name == "exact_match":
        return f"exact match {value:.4f} (greedy answers equal to the reference)"
    return f"{name} {value:.4f}"


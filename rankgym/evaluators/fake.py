"""The ``fake`` evaluator: a millisecond-fast, closed-form stand-in for a fine-tune.

For developing and benchmarking agents. Two profiles:

``separable`` (the default of ``RankSearch-fake-v0``): noise-free and a plain sum over modules,

    metric = floor + span * sum_i w_i * (1 - exp(-r_i / tau_i))

with importances w_i (summing to 1) and saturation ranks tau_i drawn from ``seed``.

``calibrated`` (``RankSearch-fake-calibrated-v0``): fitted to real MiniLM x SST-2 elastic scores
(``benchmarks/calibrate_fake.py``) and shaped like them,

    metric = floor + span * (1 - exp(-sum_i a_i * log(1 + r_i / 0.3)))      [+ noise, collapses]

with a_i = kind weight x depth profile (a logistic in depth) x a seeded log-normal jitter. What
the real scores showed and this profile reproduces (``rankgym/data/fake-calibration.json``, each figure with the map and run it came from): modules interact, and
sub-additively: one kind alone (rank 16) recovers 20-73 % of uniform-16's gain, and the six kinds'
parts sum to 2.5x the whole; the first ranks matter most (uniform 2 is 91 % of uniform 16's
gain); deep blocks and the MLP's input projection matter most. On top: seeded noise with the
seed-to-seed spread of real scores, and a few maps that collapse to chance, as 2 of 102 real
fine-tunes at the env's learning rate did.

Both profiles keep the exact optimum computable (:meth:`FakeEvaluator.optimum`): the metric is a
monotone function of a sum of per-module terms, so the best map for any parameter count is a
multiple-choice knapsack, solved exactly by dynamic programming over parameter counts (written
here because it is a dozen lines on this module's own terms, not a library's problem).

Its ``seconds`` are simulated, not measured: ``seconds_base + seconds_per_param * params``, a
fine-tune's cost model, so agents can be compared on a seconds axis and runs are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from functools import reduce
from typing import Any, Sequence

import numpy as np

from rankgym import __version__
from rankgym.core import Evaluation, ModuleInfo, adapter_params
from rankgym.evaluators.base import Evaluator
from rankgym.rankmap import RankMap

KINDS = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")
PROFILES = ("separable", "calibrated")

# The calibrated profile's constants: a least-squares fit (benchmarks/calibrate_fake.py) to 1,000
# random maps, 15 probe maps (the empty map, one kind only, one block only, all but one) and the
# 17 fidelity maps, all scored by the elastic evaluator on MiniLM x SST-2's score split.
CALIBRATED = {
    "floor": 0.654,  # the empty map (head only), measured
    "span": 0.2461,
    "kind_weight": {"query": 0.0208, "key": 0.0148, "value": 0.0481, "attn_out": 0.0514, "mlp_in": 0.0777, "mlp_out": 0.0452},
    "depth_mid": 0.3876, "depth_width": 0.1233,  # logistic in depth (block / (blocks - 1))
    "rank_scale": 0.3,
    "jitter": 0.5,  # log-normal spread of the per-module weights between seeds (not measured: it makes seeds differ)
    "noise": 0.0053,  # two elastic adapters differ by 0.6 points on average per map: sigma = 0.006 * sqrt(pi) / 2
    "collapse": 0.02,  # 2 of 102 fine-tunes at the env's learning rate (3e-3) collapsed to the majority class
    "collapsed_metric": 0.509,  # SST-2's majority-class accuracy
}


class FakeEvaluator(Evaluator):
    """A closed-form evaluator over a BERT-like layout of ``layers`` × 6 modules.

    Args:
        layers: transformer blocks (6 modules each).
        hidden / intermediate: widths, which set the modules' shapes and so their parameter costs.
        seed: draws the importances and saturation ranks (and the noise and collapses).
        profile: ``separable`` or ``calibrated`` (see the module docstring).
        noise: standard deviation of seeded Gaussian noise on the metric (None: the profile's, 0 or 0.0053).
        collapse: probability that a map collapses to chance (None: the profile's, 0 or 0.02).
        floor / span: metric of the empty map, and how much the adapters can add (None: the profile's).
        seconds_base / seconds_per_param: the simulated cost of one evaluation.
    """

    name = "fake"
    version = 2
    split = "closed form"
    cacheable = False  # the formula is cheaper than a store lookup

    def __init__(self, layers: int = 4, hidden: int = 256, intermediate: int | None = None, seed: int = 0,
                 profile: str = "separable", noise: float | None = None, collapse: float | None = None,
                 floor: float | None = None, span: float | None = None,
                 seconds_base: float = 2.0, seconds_per_param: float = 1e-5) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown fake profile {profile!r}: {' or '.join(PROFILES)}")
        calibrated = profile == "calibrated"
        intermediate = intermediate or 4 * hidden
        self.layers, self.hidden, self.intermediate, self.seed, self.profile = layers, hidden, intermediate, seed, profile
        self.noise = (CALIBRATED["noise"] if calibrated else 0.0) if noise is None else noise
        self.collapse = (CALIBRATED["collapse"] if calibrated else 0.0) if collapse is None else collapse
        self.floor = (CALIBRATED["floor"] if calibrated else 0.5) if floor is None else floor
        self.span = (CALIBRATED["span"] if calibrated else 0.42) if span is None else span
        self.seconds_base, self.seconds_per_param = seconds_base, seconds_per_param
        rng = np.random.default_rng(seed)
        shapes = {"query": (hidden, hidden), "key": (hidden, hidden), "value": (hidden, hidden),
                  "attn_out": (hidden, hidden), "mlp_in": (hidden, intermediate), "mlp_out": (intermediate, hidden)}
        self._modules = []
        for layer in range(layers):
            for kind in KINDS:
                n_in, n_out = shapes[kind]
                decay = rng.uniform(0.3, 1.2)
                spectrum = tuple(float(k ** -decay) for k in range(1, min(n_in, n_out) + 1))
                self._modules.append(ModuleInfo(f"encoder.layer.{layer}.{kind}", kind, layer, n_in, n_out, spectrum))
        if calibrated:
            depth = np.array([m.layer / max(1, layers - 1) for m in self._modules])
            profile_weight = np.array([CALIBRATED["kind_weight"][m.kind] for m in self._modules])
            profile_weight *= 1 / (1 + np.exp(-(depth - CALIBRATED["depth_mid"]) / CALIBRATED["depth_width"]))
            sigma = CALIBRATED["jitter"]
            # 6 / layers: a block of a deeper model carries less, so uniform maps score alike at every size
            self.importance = profile_weight * (6 / layers) * np.exp(sigma * rng.standard_normal(len(self._modules)) - sigma ** 2 / 2)
            self.tau = np.full(len(self._modules), CALIBRATED["rank_scale"])
        else:
            weights = rng.gamma(0.7, size=len(self._modules))
            self.importance = weights / weights.sum()
            self.tau = rng.uniform(2.0, 12.0, size=len(self._modules))

    @property
    def modules(self) -> list[ModuleInfo]:
        return self._modules

    def identity(self) -> dict[str, Any]:
        return {
            "backbone": "fake",
            "revision": f"layers{self.layers}-h{self.hidden}-i{self.intermediate}",
            "task": "fake",
            "evaluator": f"{self.name}-v{self.version}",
            "budget": {"profile": self.profile, "noise": self.noise, "collapse": self.collapse, "floor": self.floor, "span": self.span},
            "seed": self.seed,
            "version": __version__,
        }

    def _terms(self, ranks: np.ndarray) -> np.ndarray:
        """Each module's term of the inner sum, for ranks of shape (..., modules)."""
        if self.profile == "calibrated":
            return self.importance * np.log1p(ranks / self.tau)
        return self.importance * (1.0 - np.exp(-ranks / self.tau))

    def _outer(self, total: np.ndarray | float) -> np.ndarray | float:
        return self.floor + self.span * ((1.0 - np.exp(-total)) if self.profile == "calibrated" else total)

    def metric_of(self, ranks: Sequence[int]) -> float:
        """The noise-free metric of a map (one rank per module, in module order)."""
        return float(self._outer(self._terms(np.asarray(ranks, dtype=np.float64)).sum(-1)))

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        metric = self.metric_of([rank_map.ranks.get(m.name, 0) for m in self._modules])
        if self.noise or self.collapse:
            digest = hashlib.sha256(f"{self.seed}:{rank_map.key()}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            noise, draw = rng.standard_normal(), rng.random()
            metric = CALIBRATED["collapsed_metric"] if draw < self.collapse else metric + self.noise * noise
        params = self.trainable_params(rank_map)
        return Evaluation(metric, params, self.seconds_base + self.seconds_per_param * params, device="cpu")

    def optimum(self, lam: float, choices: Sequence[int], reference_params: int,
                budget: int | None = None) -> tuple[list[int], float]:
        """The best ranks (one per module, each from ``choices``) for score = metric - lam * params / reference,
        among maps of at most ``budget`` adapter parameters; noise-free, without collapses.

        Exact: for every reachable parameter count the dynamic programme keeps the largest inner
        sum (the metric only grows with it), then the best count is picked.
        """
        choices = sorted(set(int(c) for c in choices))
        costs = [[c * (m.in_features + m.out_features) for c in choices] for m in self._modules]
        unit = reduce(math.gcd, [c for row in costs for c in row if c]) or 1
        units = [[c // unit for c in row] for row in costs]
        size = sum(max(row) for row in units) + 1
        terms = self._terms(np.array(choices, dtype=np.float64)[:, None]).T  # (modules, choices)
        best = np.full(size, -np.inf)
        best[0] = 0.0
        pick = np.zeros((len(self._modules), size), dtype=np.int64)
        for i, row in enumerate(units):
            candidates = np.full((len(choices), size), -np.inf)
            for j, u in enumerate(row):
                candidates[j, u:] = best[:size - u] + terms[i, j]
            pick[i] = candidates.argmax(0)
            best = candidates.max(0)
        counts = np.arange(size) * unit
        scores = self._outer(best) - lam * counts / reference_params
        if budget is not None:
            scores[counts > budget] = -np.inf
        b = int(np.argmax(scores))
        ranks = []
        for i in reversed(range(len(self._modules))):
            j = int(pick[i, b])
            ranks.append(choices[j])
            b -= units[i][j]
        ranks.reverse()
        params = adapter_params(self._modules, ranks)
        return ranks, self.metric_of(ranks) - lam * params / reference_params

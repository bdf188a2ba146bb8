"""The ``fake`` evaluator: a millisecond-fast, closed-form stand-in for a fine-tune.

For developing and testing agents. The metric has the shape real evaluations show — diminishing
returns in each module's rank, some modules mattering much more than others — and, since it is a
sum over modules, the best map for any ``lam`` is known exactly (:meth:`FakeEvaluator.optimum`):

    metric = floor + span * sum_i w_i * (1 - exp(-r_i / tau_i))  [+ seeded noise]

with importances w_i (summing to 1) and saturation ranks tau_i drawn from ``seed``.

Its ``seconds`` are simulated, not measured: ``seconds_base + seconds_per_param * params``, a
fine-tune's cost model, so agents can be compared on a seconds axis and runs are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Sequence

import numpy as np

from rankgym import __version__
from rankgym.evaluators.base import Evaluation, Evaluator, ModuleInfo, adapter_params
from rankgym.rankmap import RankMap

KINDS = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")


class FakeEvaluator(Evaluator):
    """A closed-form evaluator over a BERT-like layout of ``layers`` × 6 modules.

    Args:
        layers: transformer blocks (6 modules each).
        hidden / intermediate: widths, which set the modules' shapes and so their parameter costs.
        seed: draws the importances and saturation ranks.
        noise: standard deviation of seeded Gaussian noise on the metric (0: deterministic).
        floor / span: metric of the empty map, and how much the adapters can add.
        seconds_base / seconds_per_param: the simulated cost of one evaluation.
    """

    name = "fake"
    version = 1
    split = "closed form"
    cacheable = False  # the formula is cheaper than a store lookup

    def __init__(self, layers: int = 4, hidden: int = 256, intermediate: int = 1024, seed: int = 0,
                 noise: float = 0.0, floor: float = 0.5, span: float = 0.42,
                 seconds_base: float = 2.0, seconds_per_param: float = 1e-5) -> None:
        self.layers, self.hidden, self.intermediate = layers, hidden, intermediate
        self.seed, self.noise, self.floor, self.span = seed, noise, floor, span
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
            "budget": {"noise": self.noise, "floor": self.floor, "span": self.span},
            "seed": self.seed,
            "version": __version__,
        }

    def metric_of(self, ranks: Sequence[int]) -> float:
        r = np.asarray(ranks, dtype=np.float64)
        return float(self.floor + self.span * np.sum(self.importance * (1.0 - np.exp(-r / self.tau))))

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        metric = self.metric_of([rank_map.ranks.get(m.name, 0) for m in self._modules])
        if self.noise:
            digest = hashlib.sha256(f"{self.seed}:{rank_map.key()}".encode()).digest()
            metric += self.noise * np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal()
        params = self.trainable_params(rank_map)
        return Evaluation(metric, params, self.seconds_base + self.seconds_per_param * params, device="cpu")

    def optimum(self, lam: float, choices: Sequence[int], reference_params: int) -> tuple[list[int], float]:
        """The best ranks (one per module, each from ``choices``) for score = metric - lam * params / reference.

        Exact, because the score is a sum of independent per-module terms (noise aside).
        """
        best = []
        for i, m in enumerate(self._modules):
            gains = [self.span * self.importance[i] * (1 - math.exp(-r / self.tau[i])) - lam * r * (m.in_features + m.out_features) / reference_params
                     for r in choices]
            best.append(choices[int(np.argmax(gains))])
        params = adapter_params(self._modules, best)
        return best, self.metric_of(best) - lam * params / reference_params

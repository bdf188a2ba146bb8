"""RankAllocationEnv: AMC-style episodes, one module per step, one evaluation per episode.

AMC (He et al., 2018; mit-han-lab/amc ``env/channel_pruning_env.py``) walks the layers once and
lets the agent set each layer's ratio from that layer's features; only the finished network is
evaluated. Here a step chooses one module's rank (in model order) from the rank grid, and the
last step evaluates the finished map through a :class:`RankSearchEnv` (its budget projection,
store and log) and returns its reward; every other step returns 0.

The observation describes the module at hand and the budget spent so far, never the whole
model, so its length does not depend on the number of modules: a policy trained on one backbone
(or on many fake ones) acts on any other. Entries (float32, in [0, 1]):

    the module's static features (depth, kind one-hot, log2 in / 16, log2 out / 16, r90), its
    share of the reference cost x modules / 4, progress (module index / modules), the budget
    spent so far, what the remaining modules could afford at most (remaining budget over their
    cost at max_rank, / 2), the budget as a fraction of the reference, the previous rank / max_rank.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from rankgym.budget import rank_grid
from rankgym.envs.rank_search import RankSearchEnv

FEATURES = 6  # beyond the static module features
ACTIONS = 9  # fractions 0, 1/8, ..., 1 of max_rank: the same actions on every rank grid


class RankAllocationEnv(gym.Env):
    """One rank per step for each module in turn; the finished map is scored once.

    Args:
        search: the environment that evaluates maps (its budget, grid, store and evaluator).
        evaluate: how a finished map (ranks in module order) is evaluated; returns the info of
            :meth:`RankSearchEnv.evaluate_map`. Default: ``search.evaluate_map``; agents pass one
            that also logs the evaluation.
    """

    metadata = {"render_modes": []}

    def __init__(self, search: RankSearchEnv, evaluate: Callable[[list[int]], dict[str, Any]] | None = None) -> None:
        self.search = search
        self.evaluate = evaluate or (lambda ranks: search.evaluate_map(dict(zip(search.names, ranks))))
        # action k asks for k/8 of max_rank, rounded to the grid min_rank + j * rank_step (on MiniLM's 0..16 by 2: rank 2k)
        grid = np.array(rank_grid(search.min_rank, search.max_rank, search.rank_step))
        wanted = np.linspace(0, search.max_rank, ACTIONS)
        self.choices = grid[np.abs(grid[None, :] - wanted[:, None]).argmin(1)]
        self.action_space = gym.spaces.Discrete(ACTIONS)
        static = search._static
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(static.shape[1] + FEATURES,), dtype=np.float32)
        unit = np.array([m.in_features + m.out_features for m in search.modules], dtype=np.float64)
        self._max_cost = unit * search.max_rank  # each module at max_rank: sums to the reference
        self._unit = unit
        self._budget = float(search.budget or search.reference_params)
        share = self._max_cost / search.reference_params * len(unit) / 4
        self._static = np.hstack([static, share[:, None]]).astype(np.float32)

    @property
    def n_modules(self) -> int:
        return len(self._unit)

    def _observe(self) -> np.ndarray:
        i = min(self.i, self.n_modules - 1)
        remaining = self._max_cost[self.i:].sum()
        affordable = (self._budget - self.spent) / remaining if remaining else 0.0
        previous = self.ranks[self.i - 1] / self.search.max_rank if self.i else 0.0
        extra = [self.i / self.n_modules, self.spent / self._budget, affordable / 2,
                 self._budget / self.search.reference_params, previous]
        return np.clip(np.concatenate([self._static[i], extra]), 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.i, self.spent = 0, 0.0
        self.ranks = np.zeros(self.n_modules, dtype=np.int64)
        return self._observe(), {}

    def step(self, action):
        rank = int(self.choices[int(action)])
        self.ranks[self.i] = rank
        self.spent += rank * self._unit[self.i]
        self.i += 1
        if self.i < self.n_modules:
            return self._observe(), 0.0, False, False, {}
        info = self.evaluate([int(r) for r in self.ranks])
        return self._observe(), float(info["reward"]), True, False, info

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

With ``task_features=True``, two more describe the task, never by name: where its spending pays.
Before the first episode the env scores one probe map per module kind and per block (that group
at max_rank, every other module at 0, projected onto the budget like every map: the budget
concentrated on the group), and each module gets its kind's and its block's probe score scaled to
[0, 1] among the kinds' and the blocks' probes (0.5 when they all score alike). So the features
are relative, comparable across tasks and metrics, and cost one evaluation per group (12 on
MiniLM), which a search spends from its budget like any other.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from rankgym.budget import rank_grid
from rankgym.envs.rank_search import RankSearchEnv

FEATURES = 6  # beyond the static module features
TASK_FEATURES = 2  # the module's kind's and block's probe scores, with task_features=True
ACTIONS = 9  # fractions 0, 1/8, ..., 1 of max_rank: the same actions on every rank grid


class RankAllocationEnv(gym.Env):
    """One rank per step for each module in turn; the finished map is scored once.

    Args:
        search: the environment that evaluates maps (its budget, grid, store and evaluator).
        evaluate: how a finished map (ranks in module order) is evaluated; returns the info of
            :meth:`RankSearchEnv.evaluate_map`. Default: ``search.evaluate_map``; agents pass one
            that also logs the evaluation.
        task_features: add the probe features (module docstring); the probes are evaluated
            through ``evaluate`` at the first reset, unless :attr:`probes` was set before it.
    """

    metadata = {"render_modes": []}

    def __init__(self, search: RankSearchEnv, evaluate: Callable[[list[int]], dict[str, Any]] | None = None,
                 task_features: bool = False) -> None:
        self.search = search
        self.task_features = task_features
        self.evaluate = evaluate or (lambda ranks: search.evaluate_map(dict(zip(search.names, ranks))))
        # action k asks for k/8 of max_rank, rounded to the grid min_rank + j * rank_step (on MiniLM's 0..16 by 2: rank 2k)
        grid = np.array(rank_grid(search.min_rank, search.max_rank, search.rank_step))
        wanted = np.linspace(0, search.max_rank, ACTIONS)
        self.choices = grid[np.abs(grid[None, :] - wanted[:, None]).argmin(1)]
        self.action_space = gym.spaces.Discrete(ACTIONS)
        static = search._static
        width = static.shape[1] + FEATURES + (TASK_FEATURES if task_features else 0)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(width,), dtype=np.float32)
        unit = np.array([m.in_features + m.out_features for m in search.modules], dtype=np.float64)
        self._max_cost = unit * search.max_rank  # each module at max_rank: sums to the reference
        self._unit = unit
        self._budget = float(search.budget or search.reference_params)
        share = self._max_cost / search.reference_params * len(unit) / 4
        self._static = np.hstack([static, share[:, None]]).astype(np.float32)
        self.groups = [(f"kind {kind}", [m.kind == kind for m in search.modules]) for kind in dict.fromkeys(m.kind for m in search.modules)]
        self.groups += [(f"block {block}", [m.layer == block for m in search.modules]) for block in dict.fromkeys(m.layer for m in search.modules)]
        self.probes: np.ndarray | None = None  # each group's probe reward, in the order of self.groups
        self._task: np.ndarray | None = None  # the task features per module, from the probes

    @property
    def n_modules(self) -> int:
        return len(self._unit)

    def probe_maps(self) -> list[list[int]]:
        """One map per group (kinds, then blocks, in model order): that group at max_rank, the rest at 0."""
        return [[self.search.max_rank if member else 0 for member in members] for _, members in self.groups]

    def _task_columns(self) -> np.ndarray:
        """Per module: its kind's and its block's probe, scaled to [0, 1] among the kinds' / the blocks' probes."""
        if self.probes is None:
            self.probes = np.array([float(self.evaluate(ranks)["reward"]) for ranks in self.probe_maps()])
        kinds = sum(name.startswith("kind ") for name, _ in self.groups)
        columns = np.zeros((self.n_modules, TASK_FEATURES))
        for column, (lo, hi) in enumerate([(0, kinds), (kinds, len(self.groups))]):
            values = self.probes[lo:hi]
            spread = values.max() - values.min()
            scaled = (values - values.min()) / spread if spread > 0 else np.full(len(values), 0.5)
            for value, (_, members) in zip(scaled, self.groups[lo:hi]):
                columns[np.array(members), column] = value
        return columns

    def _observe(self) -> np.ndarray:
        i = min(self.i, self.n_modules - 1)
        remaining = self._max_cost[self.i:].sum()
        affordable = (self._budget - self.spent) / remaining if remaining else 0.0
        previous = self.ranks[self.i - 1] / self.search.max_rank if self.i else 0.0
        extra = [self.i / self.n_modules, self.spent / self._budget, affordable / 2,
                 self._budget / self.search.reference_params, previous]
        task = self._task[i] if self.task_features else []
        return np.clip(np.concatenate([self._static[i], extra, task]), 0.0, 1.0).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.task_features and self._task is None:
            self._task = self._task_columns()
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

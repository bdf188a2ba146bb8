"""RankSearchEnv: grow, keep or shrink the LoRA rank of every module; each step is an evaluation.

The environment is thin on purpose: everything expensive sits behind an
:class:`~rankgym.evaluators.Evaluator`, and repeated maps are answered by the
:class:`~rankgym.store.EvaluationStore`.

Observation (float32, each entry in [0, 1]): for every module, in model order,

    rank / max_rank, depth (block / (blocks - 1)), one-hot kind (9: query, key, value, qkv,
    attn_out, mlp_in, mlp_out, mlp_gate, other), log2(in) / 16, log2(out) / 16, r90 / min(in, out)

where r90 is the rank whose top singular values of the frozen weight reach 90 % of their sum;
then three global features: last metric, last cost, progress in the episode (step / length).

Reward: ``score = metric - lam * cost`` with cost = the map's adapter parameters divided by those
of the uniform map at ``max_rank`` (so cost is in [0, 1]). ``reward="delta"`` gives the change of
the score since the previous step instead. With ``param_budget``, every map is projected onto the
budget before it is evaluated (:mod:`rankgym.budget`) and ``lam`` defaults to 0: the reward is the
metric at equal parameters.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from rankgym.backbones import KINDS
from rankgym.budget import budget_params, default_lam, project
from rankgym.core import Evaluation, adapter_params
from rankgym.errors import ConfigError
from rankgym.evaluators.base import Evaluator
from rankgym.evaluators.service import EvaluationService
from rankgym.rankmap import RankMap
from rankgym.store import EvaluationStore

MODULE_FEATURES = 4 + len(KINDS) + 1
GLOBAL_FEATURES = 3
SHRINK, KEEP, GROW = 0, 1, 2


class RankSearchEnv(gym.Env):
    """Search per-module LoRA ranks; every step fine-tunes and validates the new map.

    Args:
        evaluator: what a step costs (finetune, warmstart, fake, replay, ...).
        lam: weight of the cost in the score (default 0.5, or 0 with a ``param_budget``).
        param_budget: at most this many adapter parameters (> 1), or this fraction (0, 1] of the
            uniform map at ``max_rank``; maps over it are projected onto it (``info["projected"]``).
        rank_step: how much one grow/shrink action changes a rank.
        min_rank / max_rank: bounds of every module's rank (``min_rank=0`` lets a module drop its adapter).
        initial_rank: rank of every module at ``reset()``, unless ``initial_map`` is given.
        initial_map: a rank map (or its ``ranks`` dict) to start every episode from.
        max_episode_steps: steps per episode (the episode is then truncated).
        target_score: end the episode early (terminated) once the score reaches it.
        reward: ``"score"`` (metric - lam * cost) or ``"delta"`` (its change since the last step).
        groups: ``"module"`` (one action per module), ``"block"`` or ``"kind"`` (modules share an action).
        store: an :class:`EvaluationStore`, a path to one, or None for an in-memory cache.
        failure_penalty: the reward of a step whose evaluation failed (the episode then ends).
        retry_failed: evaluate maps whose stored evaluation failed again, instead of replaying the failure.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        evaluator: Evaluator,
        lam: float | None = None,
        param_budget: float | None = None,
        rank_step: int = 2,
        min_rank: int = 0,
        max_rank: int = 16,
        initial_rank: int = 8,
        initial_map: RankMap | dict[str, int] | None = None,
        max_episode_steps: int | None = 16,
        target_score: float | None = None,
        reward: str = "score",
        groups: str = "module",
        store: EvaluationStore | str | None = None,
        failure_penalty: float = -1.0,
        retry_failed: bool = False,
    ) -> None:
        lam = default_lam(param_budget) if lam is None else lam
        if lam < 0:
            raise ConfigError(f"lam must be >= 0, got {lam}")
        if rank_step < 1:
            raise ConfigError(f"rank_step must be >= 1, got {rank_step}")
        if not 0 <= min_rank <= max_rank:
            raise ConfigError(f"need 0 <= min_rank <= max_rank, got min_rank={min_rank}, max_rank={max_rank}")
        if reward not in ("score", "delta"):
            raise ConfigError(f"reward must be 'score' or 'delta', got {reward!r}")
        if groups not in ("module", "block", "kind"):
            raise ConfigError(f"groups must be 'module', 'block' or 'kind', got {groups!r}")
        self.evaluator = evaluator
        self.modules = evaluator.modules
        self.names = [m.name for m in self.modules]
        limits = np.array([min(m.in_features, m.out_features) for m in self.modules])
        if max_rank > limits.min():
            raise ConfigError(f"max_rank {max_rank} exceeds the smallest module's min(in, out) = {limits.min()}")
        self.lam, self.rank_step, self.min_rank, self.max_rank = lam, rank_step, min_rank, max_rank
        self.max_episode_steps, self.target_score, self.reward_mode = max_episode_steps, target_score, reward
        self.failure_penalty = failure_penalty
        self.reference_params = adapter_params(self.modules, [self.max_rank] * len(self.modules))
        self.budget = None if param_budget is None else budget_params(param_budget, self.reference_params)
        self.initial, self.initial_projected = self.within_budget(self._initial_ranks(initial_map, initial_rank))

        self.group_of = self._groups(groups)
        self.n_groups = int(self.group_of.max()) + 1
        self.action_space = gym.spaces.MultiDiscrete([3] * self.n_groups)
        size = len(self.modules) * MODULE_FEATURES + GLOBAL_FEATURES
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(size,), dtype=np.float32)
        self._static = self._static_features()

        self.store = store if isinstance(store, EvaluationStore) else EvaluationStore(store or ":memory:")
        self.service = EvaluationService(evaluator, self.store, retry_failed)
        self.template = evaluator.template()

        self.ranks = self.initial.copy()
        self.projected = self.initial_projected  # whether the map last evaluated was projected onto the budget
        self.t = 0
        self.last_score = self.last_metric = self.last_cost = 0.0
        self.best: dict[str, Any] | None = None
        self.last_evaluation: Evaluation | None = None  # its cache_hit says whether the store answered
        self.last_evaluations: list[Evaluation] = []  # those of the last evaluate_maps call

    # -- construction helpers ------------------------------------------------------------------
    def _initial_ranks(self, initial_map, initial_rank: int) -> np.ndarray:
        if initial_map is None:
            if not self.min_rank <= initial_rank <= self.max_rank:
                raise ConfigError(f"initial_rank {initial_rank} is outside [min_rank, max_rank] = [{self.min_rank}, {self.max_rank}]")
            return np.full(len(self.modules), initial_rank, dtype=np.int64)
        ranks = initial_map.ranks if isinstance(initial_map, RankMap) else dict(initial_map)
        unknown = sorted(set(ranks) - set(self.names))
        if unknown:
            raise ConfigError(f"initial_map names modules this environment does not adapt: {', '.join(unknown[:5])}")
        values = np.array([ranks.get(n, 0) for n in self.names], dtype=np.int64)
        if values.min() < self.min_rank or values.max() > self.max_rank:
            raise ConfigError(f"initial_map ranks must lie in [{self.min_rank}, {self.max_rank}]")
        return values

    def _groups(self, groups: str) -> np.ndarray:
        if groups == "module":
            return np.arange(len(self.modules))
        labels = [m.layer if groups == "block" else m.kind for m in self.modules]
        order = list(dict.fromkeys(labels))
        return np.array([order.index(x) for x in labels])

    def _static_features(self) -> np.ndarray:
        deepest = max(1, max(m.layer for m in self.modules))
        rows = []
        for m in self.modules:
            kind = np.zeros(len(KINDS))
            kind[KINDS.index(m.kind)] = 1.0
            r90 = m.energy_rank(0.9) / min(m.in_features, m.out_features)
            rows.append([m.layer / deepest, *kind, math.log2(m.in_features) / 16, math.log2(m.out_features) / 16, r90])
        return np.clip(np.array(rows, dtype=np.float32), 0.0, 1.0)

    # -- the map and its evaluation --------------------------------------------------------------
    def within_budget(self, ranks: np.ndarray) -> tuple[np.ndarray, bool]:
        """``ranks`` projected onto the parameter budget (unchanged without one), and whether they moved."""
        if self.budget is None:
            return ranks, False
        projected = project(ranks, self.modules, self.budget, self.min_rank, self.rank_step)
        return projected, bool((projected != ranks).any())

    def rank_map(self, ranks: Sequence[int] | None = None) -> RankMap:
        ranks = self.ranks if ranks is None else ranks
        return self.template.replace({n: int(r) for n, r in zip(self.names, ranks)})

    def cost(self, ranks: Sequence[int] | RankMap) -> float:
        return adapter_params(self.modules, ranks.ranks if isinstance(ranks, RankMap) else ranks) / self.reference_params

    @property
    def evaluations(self) -> int:
        """Evaluations this environment computed (the store answered the others)."""
        return self.service.computed

    def _evaluate(self, rank_map: RankMap) -> Evaluation:
        return self.evaluate_all([rank_map])[0]

    def evaluate_all(self, maps: Sequence[RankMap]) -> list[Evaluation]:
        """The evaluations of ``maps`` through the one evaluation path (:class:`~rankgym.evaluators.service.EvaluationService`):
        the store's first, the rest in one call where the evaluator takes several; a failure of a map
        itself is its stored result and must not kill a search, any other exception propagates."""
        return self.service.evaluate(maps)

    def _observe(self) -> np.ndarray:
        rel = (self.ranks / self.max_rank)[:, None].astype(np.float32)
        length = self.max_episode_steps or 1
        glob = np.array([self.last_metric, self.last_cost, min(1.0, self.t / length)], dtype=np.float32)
        return np.clip(np.concatenate([np.hstack([rel, self._static]).ravel(), glob]), 0.0, 1.0).astype(np.float32)

    def _record(self, rank_map: RankMap, evaluation: Evaluation) -> dict[str, Any]:
        # Whether it came from the store is kept out of info (Gymnasium's determinism check compares
        # the infos of two identical steps, and the second one is a store hit): last_evaluation says it.
        self.last_evaluation = evaluation
        cost = self.cost(rank_map)
        score = evaluation.metric - self.lam * cost
        info = {
            "metric": evaluation.metric,
            "split": self.evaluator.split,
            "params": evaluation.params,
            "cost": cost,
            "score": score,
            "seconds": evaluation.seconds,
            "rank_map": dict(rank_map.ranks),
            "projected": self.projected,
            "error": evaluation.error,
            "fraction": evaluation.fraction,  # below 1: stopped early, and metric is an estimate from the part done
        }
        if evaluation.ok and not evaluation.stopped and (self.best is None or score > self.best["score"]):
            self.best = {"score": score, "rank_map": rank_map, "evaluation": evaluation, "cost": cost}
        return info

    def evaluate_map(self, rank_map: RankMap | dict[str, int]) -> dict[str, Any]:
        """Evaluate any map of these modules (for non-RL agents), through the same store and best.

        Ranks may exceed ``max_rank`` (baselines such as the high preset); the episode is untouched.
        Returns the same info a step returns, with ``reward`` set to the score (or the penalty).
        """
        return self.evaluate_maps([rank_map])[0]

    def evaluate_maps(self, rank_maps: Sequence[RankMap | dict[str, int]]) -> list[dict[str, Any]]:
        """:meth:`evaluate_map` for several maps at once (:meth:`evaluate_all`: a Ray pool evaluates
        them side by side); the infos come back in order."""
        projected, maps = [], []
        for rank_map in rank_maps:
            ranks = rank_map.ranks if isinstance(rank_map, RankMap) else rank_map
            values, moved = self.within_budget(np.array([int(ranks.get(n, 0)) for n in self.names], dtype=np.int64))
            projected.append(moved)
            maps.append(self.template.replace({n: int(r) for n, r in zip(self.names, values)}))
        infos, self.last_evaluations = [], self.evaluate_all(maps)  # their cache_hit, map by map
        for rank_map, evaluation, moved in zip(maps, self.last_evaluations, projected):
            self.projected = moved
            info = self._record(rank_map, evaluation)
            info["reward"] = info["score"] if evaluation.ok else self.failure_penalty
            infos.append(info)
        return infos

    # -- Gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        rank_map = self.start_episode(seed)
        return self.finish_reset(rank_map, self._evaluate(rank_map))

    def start_episode(self, seed: int | None = None) -> RankMap:
        """First half of a reset: back to the initial ranks; returns the map to evaluate."""
        super().reset(seed=seed)
        if self.spec is not None and self.spec.max_episode_steps:  # gym.make(..., max_episode_steps=N)
            self.max_episode_steps = self.spec.max_episode_steps
        self.evaluator.reset_episode()
        self.ranks, self.projected = self.initial.copy(), self.initial_projected
        self.t = 0
        return self.rank_map()

    def finish_reset(self, rank_map: RankMap, evaluation: Evaluation):
        """Second half of a reset: observation and info from the initial map's evaluation."""
        info = self._record(rank_map, evaluation)
        self.last_metric, self.last_score = (evaluation.metric, info["score"]) if evaluation.ok else (0.0, 0.0)
        self.last_cost = info["cost"]
        return self._observe(), info

    def step(self, action):
        rank_map = self.apply_action(action)
        return self.finish_step(rank_map, self._evaluate(rank_map))

    def apply_action(self, action) -> RankMap:
        """First half of a step: move the ranks; returns the map to evaluate."""
        action = np.asarray(action, dtype=np.int64).reshape(-1)
        if action.shape != (self.n_groups,) or action.min() < 0 or action.max() > 2:
            raise ValueError(f"action must be {self.n_groups} integers in {{0, 1, 2}} (shrink, keep, grow), got {action.tolist()}")
        delta = (action[self.group_of] - KEEP) * self.rank_step
        self.ranks, self.projected = self.within_budget(np.clip(self.ranks + delta, self.min_rank, self.max_rank))
        self.t += 1
        return self.rank_map()

    def finish_step(self, rank_map: RankMap, evaluation: Evaluation):
        """Second half of a step: reward, observation and info from the map's evaluation."""
        info = self._record(rank_map, evaluation)
        truncated = self.max_episode_steps is not None and self.t >= self.max_episode_steps
        if not evaluation.ok:
            info["reward_terms"] = {"failure_penalty": self.failure_penalty}
            return self._observe(), float(self.failure_penalty), True, truncated, info
        score = info["score"]
        reward = score if self.reward_mode == "score" else score - self.last_score
        info["reward_terms"] = {"performance": evaluation.metric, "cost": -self.lam * info["cost"]}
        if self.reward_mode == "delta":
            info["reward_terms"]["previous_score"] = -self.last_score
        self.last_metric, self.last_cost, self.last_score = evaluation.metric, info["cost"], score
        terminated = self.target_score is not None and score >= self.target_score
        return self._observe(), float(reward), bool(terminated), bool(truncated), info

    # -- state --------------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the episode; :meth:`load_state` continues from it."""
        return {
            "ranks": {n: int(r) for n, r in zip(self.names, self.ranks)},
            "t": self.t,
            "last_metric": float(self.last_metric),
            "last_cost": float(self.last_cost),
            "last_score": float(self.last_score),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.ranks = np.array([int(state["ranks"][n]) for n in self.names], dtype=np.int64)
        self.t = int(state["t"])
        self.last_metric, self.last_cost, self.last_score = state["last_metric"], state["last_cost"], state["last_score"]

    def close(self) -> None:
        self.evaluator.close()

"""K RankSearch environments whose maps are evaluated together, in one batched fine-tune.

``BatchedEpisodes`` holds the K environments (sharing one evaluator and one store) and answers a
vector step by: applying every action, looking every map up in the store, evaluating the rest in
one ``evaluate_many`` call (the ``batched`` evaluator: K maps, one frozen base, one forward and
backward), and finishing every step. Two thin adapters expose it: a Gymnasium ``VectorEnv``
(``gym.make_vec(id, num_envs=K)``) and a Stable-Baselines3 ``VecEnv`` (``agents/ppo_steps.py --n-envs K``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rankgym.envs.rank_search import RankSearchEnv
from rankgym.core import Evaluation
from rankgym.rankmap import RankMap

OnEvaluation = Callable[[int, str, dict, float], None]


class BatchedEpisodes:
    """The shared core: K environments, one evaluator, evaluations batched across environments.

    Args:
        envs: environments built on the same evaluator and store.
        on_evaluation: called as (env index, "reset" | "step", info, reward) after each evaluation.
    """

    def __init__(self, envs: Sequence[RankSearchEnv], on_evaluation: OnEvaluation | None = None) -> None:
        self.envs = list(envs)
        self.evaluator = self.envs[0].evaluator
        self.on_evaluation = on_evaluation

    def evaluate(self, maps: list[RankMap]) -> list[Evaluation]:
        """Store hits first; the remaining distinct maps in one batched call (one store for all)."""
        return self.envs[0].evaluate_all(maps)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        maps = [env.start_episode(None if seed is None else seed + i) for i, env in enumerate(self.envs)]
        outcomes = [env.finish_reset(m, e) for env, m, e in zip(self.envs, maps, self.evaluate(maps))]
        for i, (_, info) in enumerate(outcomes):
            self._notify(i, "reset", info, info["score"])
        return np.stack([o for o, _ in outcomes]), [info for _, info in outcomes]

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """One step of every environment; finished episodes are reset in the same call, their last
        observation and info kept under ``final_observation`` / ``final_info``."""
        maps = [env.apply_action(a) for env, a in zip(self.envs, actions)]
        outcomes = [env.finish_step(m, e) for env, m, e in zip(self.envs, maps, self.evaluate(maps))]
        done = [i for i, o in enumerate(outcomes) if o[2] or o[3]]
        for i, (_, reward, _, _, info) in enumerate(outcomes):
            self._notify(i, "step", info, reward)
        observations = [o[0] for o in outcomes]
        infos = [dict(o[4]) for o in outcomes]
        if done:
            restart = [self.envs[i].start_episode() for i in done]
            for i, m, e in zip(done, restart, self.evaluate(restart)):
                obs, info = self.envs[i].finish_reset(m, e)
                self._notify(i, "reset", info, info["score"])
                infos[i] = {**info, "final_observation": observations[i], "final_info": infos[i]}
                observations[i] = obs
        return (np.stack(observations), np.array([o[1] for o in outcomes], dtype=np.float32),
                np.array([o[2] for o in outcomes]), np.array([o[3] for o in outcomes]), infos)

    def _notify(self, i: int, kind: str, info: dict, reward: float) -> None:
        if self.on_evaluation:
            self.on_evaluation(i, kind, info, reward)

    def close(self) -> None:
        self.evaluator.close()


class RankSearchVectorEnv(gym.vector.VectorEnv):
    """Gymnasium's vector API over :class:`BatchedEpisodes` (episodes reset in the same step)."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, core: BatchedEpisodes) -> None:
        self.core = core
        self.num_envs = len(core.envs)
        self.single_observation_space = core.envs[0].observation_space
        self.single_action_space = core.envs[0].action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    def _infos(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for i, info in enumerate(infos):
            merged = self._add_info(merged, info, i)
        return merged

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, infos = self.core.reset(seed)
        return obs, self._infos(infos)

    def step(self, actions):
        obs, rewards, terminated, truncated, infos = self.core.step(actions)
        return obs, rewards.astype(np.float64), terminated, truncated, self._infos(infos)

    def close_extras(self, **kwargs: Any) -> None:
        self.core.close()


class RankSearchVecEnv(VecEnv):
    """Stable-Baselines3's vector API over :class:`BatchedEpisodes`."""

    def __init__(self, core: BatchedEpisodes) -> None:
        self.core = core
        env = core.envs[0]
        super().__init__(len(core.envs), env.observation_space, env.action_space)
        self._actions = None

    def reset(self):
        obs, infos = self.core.reset(self._seeds[0] if any(s is not None for s in self._seeds) else None)
        self._reset_seeds()
        self.reset_infos = infos
        return obs

    def step_async(self, actions) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.core.step(self._actions)
        for info, term, trunc in zip(infos, terminated, truncated):
            if term or trunc:  # SB3's names for the episode's last observation
                info["terminal_observation"] = info["final_observation"]
                info["TimeLimit.truncated"] = bool(trunc and not term)
        return obs, rewards, terminated | truncated, infos

    def close(self) -> None:
        self.core.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.core.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        for i in self._get_indices(indices):
            setattr(self.core.envs[i], attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self.core.envs[i], method_name)(*args, **kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

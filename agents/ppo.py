"""PPO over AMC-style episodes, starting from a policy pretrained on fake environments and real-score tables.

    rankgym search RankSearch-minilm-sst2-v0 --agent ppo --budget 128 --param-budget 0.4
    python agents/ppo.py --env-id RankSearch-fake-calibrated-v0 --budget 128 --env param_budget=0.4
    python agents/ppo.py --pretrain rankgym/data/ppo-modules.zip --pretrain-surrogates sst2,cola,mrpc,stsb --task-features
    python agents/ppo.py --pretrain runs/ppo-no-cola.zip --pretrain-surrogates sst2,mrpc,stsb --task-features   # test on CoLA

An episode walks the modules once and chooses each one's rank from that module's features and
the budget spent so far (:class:`~rankgym.envs.allocation.RankAllocationEnv`); the finished map
is one evaluation, so ``--budget`` counts maps, as for random search and TPE. The observation
never sees the whole model, so one policy acts on any backbone, whatever its module count.

:func:`pretrain` draws calibrated and separable fake environments of 2-8 blocks, widths 128-384,
budgets of 10-70 % and seeds from 100 on (never the benchmark's seeds, 0-9 and 1000-1009, nor its
unseen size, 10 blocks of width 512); ``--pretrain-surrogates`` mixes in the shipped real-score
tables of the tasks named (:data:`rankgym.registry.SURROGATES`, ``--surrogate-share`` of the
episodes); leave a task out to test the policy on a task it never saw (the observation never
holds the task's name).

``--task-features`` pretrains a policy that also sees where the task's spending pays: one probe
map per module kind and per block, scored before the first episode (12 evaluations on MiniLM,
spent from the search's budget; :mod:`rankgym.envs.allocation`). A search reads from its policy's
observation whether it was trained with them, so ``--set pretrained=PATH`` needs nothing else.

The shipped policy (``rankgym/data/ppo-modules.zip``, made by the third command above) was pretrained with
task features on the fakes and all four shipped tables, half the episodes each: with one task left
out, such policies tie or beat TPE at 512 evaluations on the task they never saw (docs/agents.md). A search scores
its probes, then the policy's most likely map and, under a parameter budget, the free heuristics
at it (uniform, PRILoRA, EVA), then keeps learning on the target (``--pretrained none`` starts from
a random policy instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import rankgym
from rankgym.errors import ConfigError
from rankgym.harness import SearchArgs, evaluate_ranks, evaluate_starts, finish_search, open_search, parse_cli

SHIPPED = Path(rankgym.__file__).parent / "data" / "ppo-modules.zip"


@dataclass
class Args(SearchArgs):
    pretrained: str = "shipped"  # "shipped", "none" (a fresh policy) or a path to an SB3 PPO zip
    episodes_per_update: int = 4  # PPO update every this many evaluations
    learning_rate: float = 3e-4  # of the fine-tuning on the target
    ent_coef: float = 0.01
    pretrain: str | None = None  # write a pretrained policy to this path instead of searching
    pretrain_steps: int = 600_000  # module choices (episode steps) of pretraining
    pretrain_surrogates: str = ""  # shipped real-score tables mixed into pretraining, by task ("sst2,cola"; leave a task out to test on it)
    surrogate_share: float = 0.5  # share of pretraining episodes drawn from those tables (the rest: fake environments)
    task_features: bool = False  # probe features in the observation (pretraining, or --pretrained none; a pretrained policy decides itself)


def _ppo(env, args: Args, n_steps: int, learning_rate: float, seed: int):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, n_steps=n_steps, batch_size=min(64, n_steps * env.num_envs),
                n_epochs=10, learning_rate=learning_rate, gamma=1.0, gae_lambda=1.0, ent_coef=args.ent_coef,
                policy_kwargs={"net_arch": [64, 64]})
    model.set_logger(Logger(None, []))  # SB3's default logger makes an empty /tmp/SB3-<date> folder on every learn()
    return model


def run(args: Args) -> dict[str, Any]:
    if args.pretrain:
        return pretrain(args)
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankgym.envs.allocation import RankAllocationEnv

    started = time.time()
    run_dir, env, log, progress = open_search(args, "ppo")
    done = []  # evaluations of this process (a resumed run replays the logged ones through the store)

    def evaluate(ranks: list[int]) -> dict[str, Any]:
        done.append(1)
        return evaluate_ranks(env, log, progress, ranks)

    path = SHIPPED if args.pretrained == "shipped" else Path(args.pretrained)
    if args.pretrained != "none" and not path.is_file():
        raise ConfigError(f"no pretrained policy at {path}; pass --pretrained PATH, or --pretrained none to start from scratch")
    features = args.task_features if args.pretrained == "none" else has_task_features(path, RankAllocationEnv(env))
    alloc = RankAllocationEnv(env, evaluate=evaluate, task_features=features)
    if features and args.budget <= len(alloc.groups):
        raise ConfigError(f"this policy scores {len(alloc.groups)} probe maps (one per module kind and block) before its first map; "
                          f"pass --budget {len(alloc.groups) + 1} or more, or --set pretrained=none (no policy, no probes)")
    venv = DummyVecEnv([lambda: alloc])
    torch.manual_seed(args.seed)
    n_steps = args.episodes_per_update * alloc.n_modules
    if args.pretrained == "none":
        model = _ppo(venv, args, n_steps, args.learning_rate, args.seed)
    else:
        # load() rebuilds the rollout buffer and learning-rate schedule from these, for fine-tuning on the target
        model = PPO.load(str(path), env=venv, device="cpu", seed=args.seed,
                         custom_objects={"n_steps": n_steps, "batch_size": min(64, n_steps), "learning_rate": args.learning_rate,
                                         "ent_coef": args.ent_coef})
        model.set_logger(Logger(None, []))
        # the policy's most likely map first: what it learned, before any exploration
        obs, finished = alloc.reset(seed=args.seed)[0], False
        while not finished:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, finished, _, _ = alloc.step(int(action))
    # beside the policy's first map, the free heuristics at the budget: the answer is never behind them
    done.extend([1] * evaluate_starts(env, log, progress, max(0, args.budget - len(done))))

    class Budget(BaseCallback):
        """Stop once the search has spent its evaluations (episodes end exactly at a multiple of the module count)."""

        def _on_step(self) -> bool:
            return len(done) < args.budget

    if len(done) < args.budget:
        model.learn(total_timesteps=(args.budget - len(done)) * alloc.n_modules, callback=Budget())
    model.save(str(run_dir.path / "ppo_final"))
    return finish_search(run_dir, env, started, progress, args)


def has_task_features(path: Path, plain) -> bool:
    """Whether the policy at ``path`` was pretrained with task features: its observation's length
    against ``plain``'s, an allocation env of the search's modules without them."""
    from stable_baselines3.common.save_util import load_from_zip_file

    from rankgym.envs.allocation import TASK_FEATURES

    width = load_from_zip_file(str(path), load_data=True, device="cpu")[0]["observation_space"].shape[0]
    base = plain.observation_space.shape[0]
    if width not in (base, base + TASK_FEATURES):
        raise ConfigError(f"the policy at {path} observes {width} features, this env {base} (or {base + TASK_FEATURES} "
                          "with task features): it was pretrained for another observation; pretrain it again with agents/ppo.py --pretrain")
    return width == base + TASK_FEATURES


def pretraining_env(seed: int, surrogates: tuple[str, ...] = (), share: float = 0.0, task_features: bool = False):
    """A fresh environment per episode, drawn from ``seed``'s generator: with probability ``share``
    the surrogate of one of the ``surrogates`` tasks (real elastic scores, at the budget its table
    was recorded at, or a random one where it has none), else a fake one (profile, size, width,
    budget and seed drawn). With ``task_features`` the probes of a table at its fixed budget are
    scored once and reused by its later episodes."""
    import gymnasium as gym

    from dataclasses import replace

    from rankgym.envs.allocation import RankAllocationEnv
    from rankgym.registry import EnvConfig, build_env, build_evaluator

    configs = {task: EnvConfig.for_env(f"RankSearch-minilm-{task}-surrogate-v0", {}) for task in surrogates}

    class Randomised(gym.Env):
        def __init__(self) -> None:
            self.rng = np.random.default_rng(seed)
            self.tables = {task: build_evaluator(config) for task, config in configs.items()}  # fitted once, shared by episodes
            self.probes: dict[str, np.ndarray] = {}  # a table's probes at its fixed budget
            self.env = self._draw()
            self.observation_space, self.action_space = self.env.observation_space, self.env.action_space

        def _draw(self) -> RankAllocationEnv:
            if self.tables and self.rng.random() < share:
                task = list(self.tables)[int(self.rng.integers(len(self.tables)))]
                config = configs[task]  # its id's defaults: the budget and grid its table was recorded at
                fixed = config.param_budget is not None
                if not fixed:
                    config = replace(config, param_budget=float(self.rng.uniform(0.1, 0.7)))
                env = RankAllocationEnv(build_env(config, self.tables[task]), task_features=task_features)
                if task_features and fixed:
                    if task not in self.probes:
                        env.reset()
                        self.probes[task] = env.probes
                    env.probes = self.probes[task]
                return env
            profile = "calibrated" if self.rng.random() < 0.8 else "separable"
            kwargs = dict(fake_profile=profile, fake_layers=int(self.rng.choice([2, 3, 4, 6, 8])),
                          fake_hidden=int(self.rng.choice([128, 256, 384])), seed=int(self.rng.integers(100, 10**6)),
                          param_budget=float(self.rng.uniform(0.1, 0.7)))
            return RankAllocationEnv(gym.make("RankSearch-fake-v0", **kwargs).unwrapped, task_features=task_features)

        def reset(self, *, seed=None, options=None):
            self.env = self._draw()
            return self.env.reset()

        def step(self, action):
            return self.env.step(action)

    return Randomised


def pretrain(args: Args) -> dict[str, Any]:
    """Train a policy on many fake environments (and ``args.pretrain_surrogates``' real-score tables) and
    save it to ``args.pretrain``."""
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankgym.evaluators.surrogate import shipped_table

    surrogates = tuple(t.strip() for t in args.pretrain_surrogates.split(",") if t.strip())
    for task in surrogates:
        shipped_table(task)  # an unknown task is refused before minutes of training
    if not 0 <= args.surrogate_share <= 1:
        raise ConfigError(f"surrogate_share is a share of episodes in [0, 1], got {args.surrogate_share}")
    torch.manual_seed(args.seed)
    started = time.time()
    venv = DummyVecEnv([pretraining_env(args.seed * 100 + i, surrogates, args.surrogate_share, args.task_features) for i in range(8)])
    model = _ppo(venv, args, n_steps=256, learning_rate=3e-4, seed=args.seed)
    model.learn(total_timesteps=args.pretrain_steps, progress_bar=True)
    model.save(args.pretrain)
    return {"policy": args.pretrain, "steps": args.pretrain_steps, "surrogates": list(surrogates), "surrogate_share": args.surrogate_share,
            "task_features": args.task_features, "seconds": round(time.time() - started, 1)}


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

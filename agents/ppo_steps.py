"""Step-wise PPO (Stable-Baselines3) on any registered RankSearch id, in one file: every step
grows, keeps or shrinks every module's rank and is one evaluation (``--agent ppo`` is the
AMC-style agent in ``agents/ppo.py``, which beats this one on every benchmark env).

    python agents/ppo_steps.py --env-id RankSearch-fake-v0 --budget 2048 --seed 1
    rankgym search RankSearch-tiny-sst2-v0 --agent ppo-steps --budget 64

Hyperparameters come from rankgym/data/ppo.yaml (packaged), keyed by env id (rl-zoo style; ``default`` first,
then the id's own entry), and ``--set key=value`` on the command line overrides them. The defaults
suit a few hundred expensive steps: SB3's n_steps=2048 would never update within such a budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from rankgym.harness import SearchArgs, parse_cli

CONFIGS = resources.files("rankgym") / "data" / "ppo.yaml"  # package data, so an installed wheel has it too


@dataclass
class Args(SearchArgs):
    # parallel environments: on one device their maps train together in one batched fine-tune;
    # with several --devices each runs in a spawned process on its own device
    n_envs: int = 1
    devices: list[str] = field(default_factory=list)  # one device per worker (cycled), e.g. cuda:0 cuda:1
    hyperparams: dict[str, Any] = field(default_factory=dict)  # overrides of ppo.yaml (--set KEY=VALUE)


def hyperparameters(env_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    table = yaml.safe_load(CONFIGS.read_text())
    return {**table["default"], **(table.get(env_id) or {}), **overrides}


def make_env(env_id: str, env_kwargs: dict[str, Any], log_path: str, worker: int, on_record=None, allow_divergence: bool = False):
    """A thunk for SB3's vector envs (picklable for spawned workers)."""

    def thunk():
        import gymnasium as gym
        from stable_baselines3.common.monitor import Monitor

        import rankgym  # noqa: F401  (registers the ids in a spawned process)
        from rankgym.steplog import RecordEvaluations

        env = gym.make(env_id, **env_kwargs)
        return Monitor(RecordEvaluations(env, log_path, worker, on_record, allow_divergence))

    return thunk


def run(args: Args) -> dict[str, Any]:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecMonitor

    from rankgym.envs.vector import RankSearchVecEnv
    from rankgym.registry import make_batched_episodes
    from rankgym.harness import Progress
    from rankgym.run import RunDir, run_folder
    from rankgym.steplog import StepLog

    hp = hyperparameters(args.env_id, args.hyperparams)
    out = args.out or run_folder(args.env_id, "ppo-steps", args.seed)
    run_dir = RunDir(out, {**args.config(), "agent": "ppo-steps", "n_envs": args.n_envs, "devices": args.devices, "hyperparams": hp},
                     resume=args.resume)
    started = time.time()
    store = str(run_dir.store_path)  # the step log's
    progress = Progress(args.budget, f"ppo {args.env_id}")

    def worker_kwargs(i: int) -> dict[str, Any]:
        kwargs = args.env_kwargs_for_run(str(run_dir.evaluation_store))
        if args.devices:
            kwargs["device"] = args.devices[i % len(args.devices)]
        return kwargs

    spawned = args.n_envs > 1 and len(args.devices) > 1
    with run_dir.opening():
        if args.n_envs == 1:
            venv = DummyVecEnv([make_env(args.env_id, worker_kwargs(0), store, 0, progress, args.allow_divergence)])
        elif spawned:  # workers log to the shared SQLite file; the bar follows the steps the learner sees
            venv = SubprocVecEnv([make_env(args.env_id, worker_kwargs(i), store, i, None, args.allow_divergence) for i in range(args.n_envs)],
                                 start_method="spawn")
        else:  # one device: the K maps of a step train together (batched evaluator)
            logs = [StepLog(store, i, args.allow_divergence) for i in range(args.n_envs)]

            def on_evaluation(i: int, kind: str, info: dict, reward: float) -> None:
                logs[i].record(kind, info, reward, cache_hit=core.envs[i].last_evaluation.cache_hit)
                progress(kind, info, reward)

            core = make_batched_episodes(args.n_envs, args.env_id, on_evaluation, **worker_kwargs(0))
            venv = VecMonitor(RankSearchVecEnv(core))

    class Budget(BaseCallback):
        """Stop after ``budget`` environment steps (evaluations), counted over all workers."""

        def _on_step(self) -> bool:
            if spawned:
                for info in self.locals["infos"]:
                    progress("step", info, info.get("score", 0.0))
            return self.num_timesteps < args.budget

    torch.manual_seed(args.seed)
    n_steps = max(1, hp["n_steps"] // args.n_envs)
    model = PPO(
        "MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0,
        n_steps=n_steps, batch_size=min(hp["batch_size"], n_steps * args.n_envs), n_epochs=hp["n_epochs"],
        learning_rate=hp["learning_rate"], gamma=hp["gamma"], gae_lambda=hp["gae_lambda"], ent_coef=hp["ent_coef"],
        clip_range=hp["clip_range"], policy_kwargs={"net_arch": hp["net_arch"]},
    )
    model.set_logger(Logger(None, []))  # SB3's default logger makes an empty /tmp/SB3-<date> folder on every learn()
    checkpoints = CheckpointCallback(max(1, hp["checkpoint_every"] // args.n_envs), str(run_dir.path / "checkpoints"), name_prefix="ppo")
    model.learn(total_timesteps=args.budget, callback=CallbackList([Budget(), checkpoints]))
    model.save(str(run_dir.path / "checkpoints" / "ppo_final"))
    progress.close()
    template, lam = (venv.get_attr(name, [0])[0] for name in ("template", "lam"))
    evaluator = venv.get_attr("evaluator", [0])[0] if not spawned else None
    pool = evaluator.utilisation() if hasattr(evaluator, "utilisation") else None
    venv.close()
    return run_dir.finish(template, lam, started, promotion=args.promotion(), pool=pool)


if __name__ == "__main__":
    print(run(parse_cli(Args, __doc__)))

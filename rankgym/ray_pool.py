"""Evaluations on a Ray cluster: one resident evaluator per worker, the driver the only writer.

:class:`RayEvaluator` is an :class:`~rankgym.evaluators.base.Evaluator` whose evaluations run on Ray
actors, each holding the evaluator the environment would have built (model, data and wrappers
loaded once per actor, one GPU each on a GPU cluster, ``worker_cpus`` CPUs otherwise).
``evaluate_many`` spreads maps over the actors (``ray.util.ActorPool``), so every path that already
batches maps uses the pool as it is: PPO's vector envs (``--n-envs``), random search and the
baselines (a batch of maps per round), TPE (as many trials in flight as workers). Evaluations come
back to the driver, which writes the store and the step log: nothing depends on a file system
shared between nodes.

Faults are Ray's: an actor that dies (killed process, lost node, CUDA error) is restarted and the
call it was running is retried (``max_restarts``, ``max_task_retries``), on the restarted actor
or, if its node is gone, wherever Ray places it. A killed driver resumes with ``--resume`` as
always, every finished evaluation answered from its store.

The elastic evaluator trains its weight-shared adapter once, on the first actor; its weights go to
the other actors through Ray's object store instead of being trained again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from rankgym.core import Evaluation, ModuleInfo, adapter_params, failed_evaluation, is_map_failure
from rankgym.errors import ConfigError, MapFailure
from rankgym.evaluators.base import Evaluator
from rankgym.rankmap import RankMap

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'rankgym[ray]'") from None
    return ray


class _Worker:
    """The evaluator of one actor, built by the factory where the actor runs."""

    def __init__(self, factory: Callable[[], Evaluator], threads: int, index: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.evaluator, self.index = factory(), index

    def describe(self) -> tuple[dict[str, Any], list[ModuleInfo], dict[str, Any], str, bool, bool]:
        e = self.evaluator
        return e.identity(), e.modules, e.alpha_policy, e.split, e.cacheable, e.stops_early

    def elastic_weights(self):
        self.evaluator.ensure_trained()
        return self.evaluator.weights(), self.evaluator.training_seconds

    def load_elastic_weights(self, weights, training_seconds: float) -> None:
        self.evaluator.load_weights(weights, training_seconds)

    def evaluate(self, rank_map: RankMap) -> tuple[Evaluation, float, int]:
        """The evaluation, the seconds it took here, and which worker this is."""
        start = time.perf_counter()
        try:
            evaluation = self.evaluator.evaluate(rank_map)
        except Exception as err:  # NaN, out of memory: a failed evaluation, as in one process (a dead worker is Ray's to retry)
            if not is_map_failure(err):
                raise  # a bug or a misconfiguration reaches the driver and stops the run
            evaluation = failed_evaluation(err, self.evaluator.trainable_params(rank_map), time.perf_counter() - start)
        return evaluation, time.perf_counter() - start, self.index


class RayEvaluator(Evaluator):
    """An evaluator whose evaluations run on ``workers`` Ray actors.

    Args:
        factory: a picklable callable that builds one evaluator (each actor calls it once, where it runs).
        workers: actors, each holding one evaluator.
        address: ``"auto"`` joins a running cluster, an address joins that one, None starts a local one.
        worker_cpus: CPUs per actor (its torch threads); on GPU clusters each actor takes one GPU.
        max_restarts: how often a dead actor is restarted (its running call is retried).
        evaluator: the name of the evaluator the factory builds (some cannot be shared by workers).
        device: where the factory's evaluator runs (``cpu`` keeps the workers off the GPUs).
    """

    version = 1
    name = "ray"

    def __init__(self, factory: Callable[[], Evaluator], workers: int = 2, address: str | None = None, worker_cpus: int = 1,
                 max_restarts: int = 3, evaluator: str = "finetune", device: str = "auto") -> None:
        ray = _ray()
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if evaluator in ("warmstart", "replay"):
            raise ConfigError(f"the {evaluator} evaluator cannot be shared by Ray workers (it depends on its own history "
                              "or on the driver's store); use finetune, elastic, fake or surrogate")
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": max(workers * worker_cpus, 1)}))
        available = int(ray.cluster_resources().get("GPU", 0))
        gpus = device != "cpu" and available >= 1
        if gpus and workers > available:  # each GPU worker takes a whole GPU: more would wait for ever
            raise ConfigError(f"{workers} Ray workers asked for, but the cluster has {available} GPU(s) and each GPU worker takes one; "
                              f"pass --workers {available}, or --env device=cpu for CPU workers")
        actor = ray.remote(_Worker)
        options = dict(num_cpus=0 if gpus else worker_cpus, num_gpus=1 if gpus else 0, max_restarts=max_restarts,
                       max_task_retries=max_restarts)
        tag = f"rankgym-{os.getpid()}-{time.time_ns()}"  # named, so that an operator (or a test) can find a worker
        self.actors = [actor.options(name=f"{tag}-worker-{i}", **options).remote(factory, worker_cpus, i) for i in range(workers)]
        # stops_early: each worker stops against the best of the maps it scored itself
        self._identity, self._modules, self.alpha_policy, self.split, self.cacheable, self.stops_early = ray.get(
            self.actors[0].describe.remote())
        self.name = str(self._identity.get("evaluator", "ray")).split("-v")[0]
        if evaluator == "elastic":  # train once, ship the weights through the object store
            weights, seconds = ray.get(self.actors[0].elastic_weights.remote())
            ref = ray.put(weights)
            ray.get([a.load_elastic_weights.remote(ref, seconds) for a in self.actors[1:]])
        self.k = self.parallel = workers  # maps evaluated at once (a vector env's batch, an agent's proposals)
        self.per_worker = [0] * workers
        self.busy_seconds = [0.0] * workers
        self.dead: set[int] = set()  # actors that died past max_restarts
        self.started = time.perf_counter()

    @property
    def modules(self) -> list[ModuleInfo]:
        return self._modules

    def identity(self) -> dict[str, Any]:
        return self._identity  # the workers' own: a search on Ray and one without share a store

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        return self.evaluate_many([rank_map])[0]

    def evaluate_many(self, rank_maps: list[RankMap]) -> list[Evaluation]:
        """Every map on the next free actor; results in the order of ``rank_maps``.

        An actor that dies past ``max_restarts`` is dropped and its map goes to another live
        actor; a map fails (a stored failure) only once every actor it was tried on died with it,
        or no actor is left. ActorPool is not used: it gives up the whole batch on a dead actor.
        """
        ray = _ray()
        results: list[Evaluation | None] = [None] * len(rank_maps)
        tried: list[set[int]] = [set() for _ in rank_maps]
        deaths: list[list[str]] = [[] for _ in rank_maps]
        queue = list(range(len(rank_maps)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (map, actor)
        idle = [a for a in range(len(self.actors)) if a not in self.dead]
        while queue or running:
            for i in list(queue):
                untried = [a for a in range(len(self.actors)) if a not in self.dead and a not in tried[i]]
                if not untried and not tried[i]:  # the workers died on other maps: nothing says this one fails
                    raise RuntimeError("every Ray worker died; the evaluations that finished are stored: "
                                       "resume the run (rankgym search --resume) to continue")
                if not untried:  # every live actor it was tried on died with it: the map's own failure
                    queue.remove(i)
                    died = MapFailure("the Ray worker died evaluating this map on every worker tried: " + "; ".join(deaths[i]))
                    results[i] = failed_evaluation(died, adapter_params(self._modules, rank_maps[i].ranks), 0.0)
                    continue
                free = [a for a in idle if a in untried]
                if free:
                    queue.remove(i)
                    idle.remove(free[0])
                    running[self.actors[free[0]].evaluate.remote(rank_maps[i])] = (i, free[0])
            if not running:
                continue
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ref)
            try:
                evaluation, seconds, worker = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self.dead.add(actor)
                tried[i].add(actor)
                deaths[i].append(f"worker {actor}: {str(err).splitlines()[0]}")
                log.warning("Ray worker %d died (past its restarts); its map goes to another worker", actor)
                queue.insert(0, i)
                continue
            self.per_worker[worker] += 1
            self.busy_seconds[worker] += seconds
            results[i] = evaluation
            idle.append(actor)
        return results

    def utilisation(self) -> dict[str, Any]:
        """Evaluations per worker and the share of wall time each spent evaluating."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        return {"evaluations_per_worker": list(self.per_worker), "utilisation": [round(b / wall, 3) for b in self.busy_seconds]}

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a)

"""The ``finetune`` evaluator: fresh seeded adapters, a fixed training budget, full validation.

The model, tokenised data and LoRA wrappers (allocated at ``max_rank``) stay resident between
evaluations; each evaluation re-ranks the wrappers and re-initialises adapters and head in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from rankgym import __version__
from rankgym.backbones import get_backbone, load_backbone, module_infos
from rankgym.errors import ConfigError
from rankgym.core import Evaluation, ModuleInfo
from rankgym.evaluators.base import Evaluator
from rankgym.lora.inject import apply_rank_map, save_peft_adapter
from rankgym.lora.layer import ShrinkMode
from rankgym.rankmap import RankMap
from rankgym.recipe import ALPHA_POLICY, Recipe
from rankgym.tasks import encode, hold_out_score_split, load_task, standardized
from rankgym.training import (FinetuneResult, batches_per_epoch, default_eval_batch_size, evaluate, finetune, init_adapters,
                              training_subset)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
    return resolved


def package_versions() -> dict[str, str]:
    """Versions of the libraries whose numerics an evaluation depends on."""
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def _revision(model, backbone: str) -> str:
    """Which weights these are: the hub commit when known, else a hash of the config."""
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    text = json.dumps(model.config.to_diff_dict(), sort_keys=True, default=str)
    return f"{backbone}-config-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


class FinetuneEvaluator(Evaluator):
    """Evaluate a rank map by a short, real LoRA fine-tune and validation.

    Args:
        backbone: backbone name (``gpt2``, ``minilm``, ``tiny``, ...).
        task: task name or folder (see :func:`rankgym.tasks.load_task`).
        recipe: the training budget.
        seed: decides the training subset, its order, adapter and head initialisation.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        max_rank: rank every wrapper is allocated at, so that re-ranking never reallocates.
        alpha / alpha_mode / rslora: the alpha policy of every evaluated map.
        score_on: ``"score"`` scores maps on examples held out of the training file (what a search
            uses, see :func:`rankgym.tasks.hold_out_score_split`); ``"validation"`` on the
            validation split (final numbers: ``rankgym finetune`` and promotion).
        score_examples: size of the score split (default: the validation split's, at most 1,000).
        model_name_or_path / data_dir: local copies instead of the hub (``backbone="auto"``: the model to adapt).
        target_modules: PEFT-style module names or regexes to adapt instead of the backbone's defaults.
        dtype: the frozen base's precision (``fp32``, ``bf16``, ``fp16``); adapters and head stay fp32.
        text_column / label_column: columns of a task given as a folder of TSV/CSV files
            (``text_column="a,b"`` for sentence pairs).
        regression: a task folder's labels are float targets (None: detected).
        metric: what scores a map instead of the task's own metric (see :data:`rankgym.metrics.BY_KIND`:
            e.g. ``accuracy`` for MRPC, ``exact_match`` for a causal-LM task).
        gradient_checkpointing: recompute the base's activations in the backward pass instead of keeping
            them (transformers' ``gradient_checkpointing_enable``): less memory, about a third more
            compute, the same numbers (the tests check it), so it is not part of :meth:`identity`.
        pruner / rungs / report_examples: stop a map's training part-way where Optuna's pruner says so
            (``sha``, ``hyperband``, ``median``; see :mod:`rankgym.evaluators.pruning`); None: never.
    """

    name = "finetune"
    version = 4  # 4: BERT's pooler trains with the head; 3: factors seeded per module (common random numbers); 2: score split held out of training, gradient clipping, rank-robust alpha policy

    def __init__(
        self,
        backbone: str = "minilm",
        task: str = "sst2",
        recipe: Recipe = Recipe(),
        seed: int = 0,
        device: str = "auto",
        max_rank: int = 32,
        alpha: float = ALPHA_POLICY["alpha"],
        alpha_mode: str = ALPHA_POLICY["alpha_mode"],
        rslora: bool = ALPHA_POLICY["rslora"],
        score_on: str = "score",
        score_examples: int | None = None,
        model_name_or_path: str | None = None,
        data_dir: str | None = None,
        text_column: str = "sentence",
        label_column: str = "label",
        regression: bool | None = None,
        metric: str | None = None,
        gradient_checkpointing: bool = False,
        progress: bool = False,
        target_modules: Sequence[str] | None = None,
        dtype: str = "fp32",
        pruner: str | None = None,
        rungs: int = 4,
        report_examples: int = 256,
    ) -> None:
        self.spec = get_backbone(backbone, model_name_or_path, target_modules)
        self.dtype = dtype
        self.recipe, self.seed, self.max_rank, self.progress = recipe, seed, max_rank, progress
        self.device = resolve_device(device)
        if score_on not in ("score", "validation"):
            raise ConfigError(f"score_on must be 'score' or 'validation', got {score_on!r}")
        if alpha_mode not in ("fixed", "ratio"):
            raise ConfigError(f"alpha_mode must be 'fixed' or 'ratio', got {alpha_mode!r}")
        self.alpha_policy = dict(alpha=float(alpha), alpha_mode=alpha_mode, rslora=bool(rslora))
        self.data = load_task(task, data_dir, text_column, label_column, regression, metric=metric)
        self.model_name_or_path = model_name_or_path
        with torch.random.fork_rng(devices=[]):
            self.model, self.tokenizer = load_backbone(backbone, model_name_or_path, self.data.num_labels, seed, dtype=dtype)
        self.model.to(self.device)
        if gradient_checkpointing:
            # non-reentrant: gradients reach the adapters although the frozen base's inputs need none.
            # transformers 5.24 renamed it activation checkpointing; older releases only have the first name.
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pool, score = hold_out_score_split(self.data, score_examples)
        validation = self.data.validation
        if self.data.regression:
            pool, score, validation = standardized([pool, score, validation], pool)
        self.split, self.score_examples = score_on, len(score)
        subset = training_subset(len(pool), recipe, seed)
        if self.data.causal_lm:
            from rankgym.instruct import encode_lm

            def encoded(split):
                return encode_lm(split, self.tokenizer, recipe.max_length, self.data.metric)[0]
        else:
            def encoded(split):
                return encode(split, self.tokenizer, recipe.max_length, self.data.metric)
        self.train_set = encoded(pool.subset(subset))
        self.val_set = encoded(score if score_on == "score" else validation)
        self.score_set = encoded(score)  # evaluate_both's second split
        self.revision = _revision(self.model, backbone)
        self._modules = module_infos(self.model, self.spec)
        self.pruning = None
        if pruner is not None:
            from rankgym.evaluators.pruning import Pruning

            report_set = self.val_set.take(list(range(min(report_examples, len(self.val_set)))))
            self.pruning = Pruning(pruner, rungs, report_set, self.tokenizer.pad_token_id, recipe.eval_batch_size)
            self.pruner_settings = {"pruner": pruner, "rungs": rungs, "report_examples": len(report_set)}
            self.stops_early = True
        self.last_result: FinetuneResult | None = None  # the last evaluation's losses and step count

    @property
    def modules(self) -> list[ModuleInfo]:
        return self._modules

    @property
    def peft_task_type(self) -> str:
        return "CAUSAL_LM" if self.data.causal_lm else "SEQ_CLS"  # a language model has no head to save

    def identity(self) -> dict[str, Any]:
        """Everything that decides a result besides the map, as it is really run (the store's key)."""
        resolved = replace(self.recipe, eval_batch_size=self.recipe.eval_batch_size or default_eval_batch_size(self.device))
        return {
            "backbone": self.spec.name,
            "revision": self.revision,
            "target_modules": list(self.spec.target_patterns),
            "dtype": self.dtype,
            "task": self.data.name,
            "metric": self.data.metric,
            "evaluator": f"{self.name}-v{self.version}",
            "budget": resolved.to_dict(),
            "device_type": self.device.type,
            "packages": package_versions(),
            "seed": self.seed,
            "alpha_policy": self.alpha_policy,
            "scored_on": self.split,
            "score_examples": self.score_examples,
            "version": __version__,
            **({"pruning": self.pruner_settings} if self.pruning is not None else {}),  # absent: identities from before it
        }

    def score_identity(self) -> dict[str, Any]:
        """The identity of the same retrain scored on the score split (:meth:`evaluate_both`'s second result)."""
        return {**self.identity(), "scored_on": "score"}

    def evaluate_both(self, rank_map: RankMap) -> tuple[Evaluation, Evaluation]:
        """One fine-tune scored twice: on this evaluator's split and on the score split.

        Promotion chooses its winner by the second (held out of training, and not the split it
        reports) and reports the first, so the winner's reported number is not the maximum of
        the numbers it was chosen by.
        """
        evaluation = self.evaluate(rank_map)
        start = time.perf_counter()
        metric, loss = evaluate(self.model, self.score_set, self.tokenizer.pad_token_id, self.recipe.eval_batch_size)
        scored = replace(evaluation, metric=metric, val_loss=loss, seconds=time.perf_counter() - start)
        return evaluation, scored

    def prepare(self, rank_map: RankMap, shrink: ShrinkMode = "prefix", generator: torch.Generator | None = None) -> None:
        """Re-rank the resident wrappers to ``rank_map`` (modules it does not name get rank 0);
        components that grow are drawn from ``generator`` (torch's global one by default)."""
        full = {m.name: 0 for m in self._modules}
        full.update(rank_map.ranks)
        apply_rank_map(self.model, rank_map.replace(full), max_rank=self.max_rank, shrink=shrink, generator=generator)

    def private_rng(self):
        """Seeded work inside leaves the caller's RNG alone: an agent sampling from torch's global
        generator must see the same numbers whether an evaluation trains or comes from the store."""
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=cuda)

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        with self.private_rng():
            return self._evaluate(rank_map)

    def evaluate_curve(self, rank_map: RankMap) -> tuple[Evaluation, list[dict[str, float]]]:
        """:meth:`evaluate`, also scoring the model after every epoch: the metric against epochs from one fine-tune.

        Each point is ``{"epoch": e, "score": metric on the score split}``, plus ``"validation"``
        where this evaluator scores on validation. The learning rate decays over all the recipe's
        epochs, so epoch e of a longer recipe is not a recipe of e epochs. Scoring draws no random
        numbers, so the evaluation returned is exactly :meth:`evaluate`'s.
        """
        if self.pruning is not None:
            raise ConfigError("a curve scores every epoch of a full fine-tune; make the evaluator without a pruner")
        pad, size = self.tokenizer.pad_token_id, self.recipe.eval_batch_size
        per_epoch = batches_per_epoch(self.train_set, self.recipe.batch_size)
        curve: list[dict[str, float]] = []

        def after_step(step: int) -> None:
            if (step + 1) % per_epoch:
                return
            point = {"epoch": (step + 1) // per_epoch, "score": evaluate(self.model, self.score_set, pad, size)[0]}
            if self.split == "validation":
                point["validation"] = evaluate(self.model, self.val_set, pad, size, self.recipe.val_examples)[0]
            curve.append(point)

        with self.private_rng():
            return self._evaluate(rank_map, after_step), curve

    def _evaluate(self, rank_map: RankMap, after_step: Callable[[int], None] | None = None) -> Evaluation:
        start = time.perf_counter()
        self.prepare(rank_map)
        init_adapters(self.model, self.seed)
        if self.pruning is not None:
            return self._evaluate_pruned(rank_map, start)
        result = finetune(
            self.model,
            self.train_set,
            self.val_set,
            self.tokenizer.pad_token_id,
            self.recipe,
            self.seed,
            progress=self.progress,
            after_step=after_step,
        )
        self.last_result = result
        return Evaluation(
            metric=result.metric,
            params=self.trainable_params(rank_map),
            seconds=time.perf_counter() - start,
            val_loss=result.val_loss,
            train_loss=result.train_loss,
            device=str(self.device),
        )

    def _evaluate_pruned(self, rank_map: RankMap, start: float) -> Evaluation:
        """One trial of :mod:`rankgym.evaluators.pruning`: the full evaluation, or a partial one where the pruner stops it."""
        from rankgym.evaluators.pruning import Pruned

        steps = batches_per_epoch(self.train_set, self.recipe.batch_size) * self.recipe.epochs
        trial, after_step = self.pruning.trial(self.model, steps)
        try:
            result = finetune(self.model, self.train_set, self.val_set, self.tokenizer.pad_token_id, self.recipe, self.seed,
                              progress=self.progress, after_step=after_step)
        except Pruned as stop:
            self.pruning.pruned(trial)
            return Evaluation(metric=stop.value, params=self.trainable_params(rank_map), seconds=time.perf_counter() - start,
                              device=str(self.device), fraction=stop.fraction)
        except BaseException:
            self.pruning.completed(trial, math.nan)
            raise
        self.pruning.completed(trial, result.metric)
        self.last_result = result
        return Evaluation(metric=result.metric, params=self.trainable_params(rank_map), seconds=time.perf_counter() - start,
                          val_loss=result.val_loss, train_loss=result.train_loss, device=str(self.device))

    def save_peft_adapter(self, directory: str | Path, rank_map: RankMap) -> Path:
        """The model as last trained, as a PEFT adapter folder (see :func:`rankgym.lora.inject.save_peft_adapter`).

        Written to a temporary folder and renamed, so a killed process never leaves a partial adapter.
        """
        directory = Path(directory)
        # the base in the dtype the model trained on: an fp32 copy of a bf16 model would double the peak memory
        base, _ = load_backbone(self.spec.name, self.model_name_or_path, self.data.num_labels, self.seed, dtype=self.dtype)
        tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_peft_adapter(self.model, base, tmp, rank_map)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
        return directory

    @contextmanager
    def released(self) -> Iterator[None]:
        """Free the model's memory for the duration and put every tensor back as it was after.

        The parameters and buffers go to a temporary file (``torch.save``: tied and shared tensors
        are kept as they are) and their storage is emptied in place, so every object (wrappers,
        tied weights, a trained elastic adapter, a warm start's state) is the same one afterwards
        and holds the same values. One model in memory at a time is what a GPU's memory allows
        for a large base: the proposal of a one-shot strategy or EVA's probe loads its own.
        """
        tensors = dict(self.model.named_parameters())
        tensors.update(self.model.named_buffers())
        with tempfile.TemporaryDirectory(prefix="rankgym-released-") as folder:
            path = Path(folder) / "model.pt"
            torch.save({name: t.detach() for name, t in tensors.items()}, path)
            for t in tensors.values():
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                yield
            finally:
                saved = torch.load(path, weights_only=True)
                for name, t in tensors.items():
                    t.data = saved[name].to(t.device)

    def close(self) -> None:
        self.model = None  # idempotent: Gymnasium may close twice
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

"""The ``elastic`` evaluator: one weight-shared adapter trained once, every map scored by slicing it.

Training: every module is wrapped at ``max_rank``; before each optimizer step every module draws
its rank from the env's grid (min_rank, min_rank + rank_step, ..., max_rank; rank 0 turns the
module's adapter off for the step) and uses the prefix of its factors, so the first r components
of every module learn to work as a rank-r adapter next to any ranks of the others (the nested
prefixes of DyLoRA, with the independent per-module draws of the neural low-rank adapter search
in IntelLabs' SQFT / NNCF). With ``sandwich=True`` every other step uses the full rank everywhere
(the sandwich rule of slimmable networks), which keeps the large prefixes trained. With a
``draw_budget`` the drawn map is projected onto that parameter budget by the env's own rule
(:func:`rankgym.budget.project`), so the adapter trains on the maps a budgeted search scores: under
a budget below uniform rank 1 independent draws almost never leave most modules off, and the rank-1
prefixes of such maps were scored far from what they reach when trained alone. With ``group_draws``
a share of the draws also turns whole module kinds or blocks off (:func:`group_off`). The task head
is shared. The scale of a prefix is ``lora_scale(r)`` of the alpha policy, in training and in
scoring alike.

Scoring: each module is sliced to the map's rank, merged into its frozen weight (a forward then
costs what the base model costs: 15 % less than the unmerged one for MiniLM on a CPU) and the score
split is run, with no training; the frozen weights are then copied back exactly, so a score never
depends on the maps scored before it.

Early stopping (``early_stop``, a confidence such as 0.95): the score split is read in ``chunks``
equal random parts (fixed by the seed, stratified by length: :func:`stratified_parts`), keeping
every example's prediction. After each part but the last, the map is compared with a reference
map on the examples read so far (the ``stop_top``-th best map fully scored by this evaluator, whose
predictions are kept): where a paired bootstrap bound says, at the confidence (Bonferroni-split
over the looks), that the map's metric is below the reference's, scoring stops. Its
:class:`Evaluation` then has ``fraction`` < 1 and, as its metric, the reference's full score plus
the paired difference observed on the examples read (at most the bound, so below the reference):
an estimate an agent can act on, and a stopped map is never among the best. Such a score then
depends on the maps scored before it, so the identity carries the setting and the store keeps
stopped scores apart.

The trained adapter is saved (safetensors) in ``cache_dir`` under a hash of everything that decides
it, written to a temporary file and renamed, so another process, a resumed search or a later run
reuses it, and a file left half-written by a killed process is never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rankgym.backbones import head_modules
from rankgym.budget import budget_params, project, rank_grid
from rankgym.core import Evaluation, adapter_params
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.inject import lora_layers
from rankgym.rankmap import RankMap
from rankgym.errors import ConfigError
from rankgym.metrics import compute as compute_metric
from rankgym.metrics import paired_upper_bound
from rankgym.training import default_eval_batch_size, evaluate, finetune, init_adapters, predict

log = logging.getLogger(__name__)


def group_off(infos: list, rng: np.random.Generator) -> np.ndarray:
    """Which modules a group draw turns off: those of a random half of the module kinds or of the
    blocks (either at even odds). Independent per-module draws almost never leave a whole kind or
    block off (all six query modules at rank 0: about one draw in half a million with ranks 0, 2,
    ..., 16), yet searches and AdaLoRA answer with such maps."""
    by_kind = rng.random() < 0.5
    groups = np.array([m.kind if by_kind else m.layer for m in infos])
    names = np.unique(groups)
    off = names[rng.random(len(names)) < 0.5]
    return np.isin(groups, off)


def stratified_parts(lengths: list[int], parts: int, seed: int, batch_size: int) -> list[np.ndarray]:
    """Indices of ``lengths`` dealt into ``parts`` samples stratified by length, in whole batches.

    The examples sorted by length are cut into the batches a full pass reads (``batch_size``, made
    smaller where that would leave fewer than four batches a part), and each run of ``parts``
    neighbouring batches goes one to a part, at random. So the parts together read exactly the
    full pass's batches (dealing single examples padded 22 % more tokens on SST-2, which made
    reading a map in four parts 20 % slower than one pass), and each part is a random sample
    stratified by length: within a run the examples differ little in length, which is what lets
    the bound treat a part as a sample of examples.
    """
    rng = np.random.default_rng(seed)
    unit = max(1, min(batch_size, len(lengths) // (4 * parts)))
    by_length = np.argsort(lengths, kind="stable")
    batches = [by_length[k : k + unit] for k in range(0, len(lengths), unit)]
    dealt: list[list[int]] = [[] for _ in range(parts)]
    for start in range(0, len(batches), parts):
        for part, batch in zip(rng.permutation(parts), batches[start : start + parts]):
            dealt[part].extend(batch.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in dealt]


class ElasticEvaluator(FinetuneEvaluator):
    """Score rank maps by slicing one elastic adapter trained once per identity.

    Args:
        min_rank / rank_step: with ``max_rank``, the grid every module draws its rank from.
        sandwich: every other training step at full rank on every module.
        draw_budget: draws projected onto this parameter budget (a fraction of uniform ``max_rank``'s
            adapter parameters, or a count, as the env's ``param_budget``); None: the grid's draws as they are.
        group_draws: the share of drawn steps that also turn whole groups off: every module of a random
            half of the module kinds, or of the blocks (either, at even odds). 0: modules draw alone.
        early_stop: the confidence at which a map's scoring stops once it cannot reach the reference (None: never).
        chunks: parts the score split is read in when stopping early.
        stop_top: the reference is the ``stop_top``-th best full score (the number of maps promotion will retrain).
        cache_dir: folder where the trained adapter is saved and looked for (None: kept in memory only).
        merge: score with each slice merged into the frozen weights (None: on a CPU only; see ``__init__``).
        **kwargs: as :class:`FinetuneEvaluator`; its ``recipe`` is the elastic adapter's one training run.
    """

    name = "elastic"
    version = 3  # 3: BERT's pooler trains with the head; 2: factors seeded per module, scoring on merged weights

    def __init__(self, *args: Any, min_rank: int = 0, rank_step: int = 2, sandwich: bool = True, draw_budget: float | None = None,
                 group_draws: float = 0.0, early_stop: float | None = None, chunks: int = 4, stop_top: int = 1,
                 cache_dir: str | Path | None = None, merge: bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if early_stop is not None and not 0.5 < early_stop < 1:
            raise ConfigError(f"early_stop is the confidence a stop needs, in (0.5, 1), e.g. 0.95; got {early_stop!r}")
        if not 0 <= group_draws <= 1:
            raise ConfigError(f"group_draws is the share of drawn training steps that turn whole groups off, in [0, 1]; "
                              f"got {group_draws!r}")
        if chunks < 2 or stop_top < 1:
            raise ConfigError(f"early stopping reads the score split in chunks >= 2 parts against the stop_top >= 1-th best map; "
                              f"got chunks={chunks}, stop_top={stop_top}")
        if early_stop is not None and self.data.causal_lm:
            raise ConfigError("early_stop compares per-example predictions of a classification or regression task; "
                              f"{self.data.name} is a causal-LM task: leave early_stop unset")
        self.early_stop, self.chunks, self.stop_top = early_stop, chunks, stop_top
        self.stops_early = early_stop is not None
        self._best: list[tuple[float, np.ndarray]] = []  # the stop_top best full scores and their predictions
        self._parts: list[np.ndarray] | None = None  # the score split's parts (stratified_parts), dealt at the first stopping scoring
        # Merging makes the scoring forward a plain one (15 % faster on a CPU) but keeps a copy of every
        # adapted weight to restore from: on a GPU, where memory is what runs out, score through the adapters.
        self.merge = self.device.type == "cpu" if merge is None else merge
        self.grid = rank_grid(min_rank, self.max_rank, rank_step)
        self.min_rank, self.rank_step = min_rank, rank_step
        self.sandwich = sandwich
        self.draw_budget = draw_budget
        self.group_draws = group_draws
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.training_seconds: float | None = None  # what training the adapter cost (also when it was loaded)
        self.source: str | None = None  # "trained", "loaded" (from its file) or "shipped" (by a Ray pool)
        self._frozen: dict[str, torch.Tensor] | None = None

    def adapter_identity(self) -> dict[str, Any]:
        """What decides the trained adapter (its file's name): the identity less how maps are scored."""
        # absent when unset: the identities from before each option, so their adapters and scores are reused
        extra = {"draw_budget": self.draw_budget} if self.draw_budget is not None else {}
        if self.group_draws:
            extra["group_draws"] = self.group_draws
        return {**super().identity(), "evaluator": f"{self.name}-v{self.version}", "grid": self.grid, "sandwich": self.sandwich, **extra}

    def identity(self) -> dict[str, Any]:
        if self.early_stop is None:
            return self.adapter_identity()
        return {**self.adapter_identity(), "early_stop": {"confidence": self.early_stop, "chunks": self.chunks, "top": self.stop_top}}

    @property
    def adapter_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(self.adapter_identity(), sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_dir / f"elastic-{self.spec.name}-{self.data.name}-{digest}.safetensors"

    # -- the elastic adapter ----------------------------------------------------------------------
    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        params = {}
        for name, layer in lora_layers(self.model).items():
            params[f"{name}.lora_A"], params[f"{name}.lora_B"] = layer.lora_A, layer.lora_B
        for name, head in head_modules(self.model).items():
            params.update({f"{name}.{k}": p for k, p in head.named_parameters()})
        return params

    def ensure_trained(self) -> None:
        """Load the elastic adapter from the cache, or train it once and save it."""
        if self.source is not None:
            return
        with self.private_rng():
            self.prepare(self.template().replace({m.name: self.max_rank for m in self.modules}))
            if self._load():
                self.source = "loaded"
                return
            start = time.perf_counter()
            init_adapters(self.model, self.seed)
            named = lora_layers(self.model)
            layers = list(named.values())
            rng = np.random.default_rng(self.seed)
            infos, limit = [{m.name: m for m in self.modules}[n] for n in named], None
            if self.draw_budget is not None:
                limit = budget_params(self.draw_budget, adapter_params(infos, [self.max_rank] * len(infos)))

            def draw(step: int) -> None:
                if self.sandwich and step % 2 == 0:
                    ranks = np.full(len(layers), self.max_rank)
                else:
                    ranks = rng.choice(self.grid, size=len(layers))
                    # no draw at share 0: the random stream, so the adapters of the identities before the option, unchanged
                    if self.group_draws and rng.random() < self.group_draws:
                        ranks[group_off(infos, rng)] = 0
                    if limit is not None:
                        ranks = project(ranks, infos, limit, self.min_rank, self.rank_step)
                for layer, rank in zip(layers, ranks):
                    layer.use_prefix(int(rank))

            # finetune ends with a validation pass; one example keeps it cheap (maps are scored one by one later)
            self.last_result = finetune(self.model, self.train_set, self.val_set.take([0]), self.tokenizer.pad_token_id,
                                        self.recipe, self.seed, progress=self.progress or sys.stderr.isatty(),  # minutes: a bar with an ETA
                                        description="elastic adapter",
                                        before_step=draw)
            self.training_seconds = time.perf_counter() - start
            self.source = "trained"
            self._save()

    def _load(self) -> bool:
        path = self.adapter_path
        if path is None or not path.is_file():
            return False
        try:
            with safe_open(str(path), "pt") as f:  # one read: tensors and metadata
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            log.warning("ignoring unreadable elastic adapter %s (%s); training a new one", path, err)
            return False
        if not self._fits(tensors):
            log.warning("ignoring elastic adapter %s: its tensors do not fit this model; training a new one", path)
            return False
        self._copy_in(tensors)
        self.training_seconds = float(metadata.get("training_seconds", "nan"))
        return True

    def _fits(self, tensors: dict[str, torch.Tensor]) -> bool:
        params = self._trainable()
        return set(tensors) == set(params) and all(tensors[k].shape == p.shape for k, p in params.items())

    def _copy_in(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in self._trainable().items():
                p.copy_(tensors[k])

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained adapter's tensors (on the CPU), to hand to another evaluator of the same identity."""
        self.ensure_trained()
        return {k: p.detach().cpu().clone() for k, p in self._trainable().items()}

    def load_weights(self, tensors: dict[str, torch.Tensor], training_seconds: float) -> None:
        """Use an adapter another evaluator of the same identity trained (a Ray pool ships it)."""
        with self.private_rng():
            self.prepare(self.template().replace({m.name: self.max_rank for m in self.modules}))
        if not self._fits(tensors):
            raise ValueError("these elastic weights do not fit this model")
        self._copy_in(tensors)
        self.training_seconds, self.source = training_seconds, "shipped"

    def _save(self) -> None:
        path = self.adapter_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        save_file({k: p.detach().contiguous().cpu() for k, p in self._trainable().items()}, str(tmp),
                  metadata={"identity": json.dumps(self.adapter_identity(), sort_keys=True), "training_seconds": f"{self.training_seconds:.2f}"})
        os.replace(tmp, path)  # atomic: readers see the old state or the whole file, never a part

    # -- scoring ------------------------------------------------------------------------------------
    def slice_to(self, rank_map: RankMap) -> None:
        """Use each module's first ``rank`` components (modules the map does not name: rank 0)."""
        for name, layer in lora_layers(self.model).items():
            layer.use_prefix(int(rank_map.ranks.get(name, 0)))

    def _ready(self, rank_map: RankMap) -> None:
        if max(rank_map.ranks.values(), default=0) > self.max_rank:  # refused before any training
            raise ValueError(f"the elastic adapter holds ranks up to {self.max_rank}; this map asks for {max(rank_map.ranks.values())}")
        self.ensure_trained()

    @contextmanager
    def _scoring(self, rank_map: RankMap) -> Iterator[None]:
        """The model in eval mode as ``rank_map`` slices it (merged into the frozen weights where ``merge``), restored after."""
        self.slice_to(rank_map)
        layers = lora_layers(self.model) if self.merge else {}
        if self.merge and self._frozen is None:  # the frozen weights never change: one copy to restore from after every merge
            self._frozen = {name: layer.base.weight.detach().clone() for name, layer in layers.items()}
        was_training = self.model.training
        try:
            for layer in layers.values():
                layer.merge()
            self.model.eval()
            yield
        finally:
            self.model.train(was_training)
            for name, layer in layers.items():
                layer.unmerge(self._frozen[name])

    def _split(self) -> tuple[int, int]:
        """(examples of the score split read, batch size) of a scoring."""
        n = len(self.val_set) if self.recipe.val_examples is None else min(self.recipe.val_examples, len(self.val_set))
        return n, self.recipe.eval_batch_size or default_eval_batch_size(self.device)

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        self._ready(rank_map)
        start = time.perf_counter()
        with self._scoring(rank_map):
            if self.early_stop is None:
                metric, loss = evaluate(self.model, self.val_set, self.tokenizer.pad_token_id, self.recipe.eval_batch_size,
                                        self.recipe.val_examples)
                fraction = 1.0
            else:
                metric, loss, fraction = self._score_until_decided()
        return Evaluation(metric=metric, params=self.trainable_params(rank_map), seconds=time.perf_counter() - start,
                          val_loss=loss, device=str(self.device), fraction=fraction)

    def example_results(self, rank_map: RankMap) -> tuple[np.ndarray, np.ndarray]:
        """Each score-split example's prediction and loss under ``rank_map`` (minus the log-probability
        of the gold label, or the squared error), in the split's order: what a score on any subset of
        the examples is computed from (``benchmarks/fidelity.py --examples-curve``)."""
        if self.data.causal_lm:
            raise ConfigError(f"example_results reads a classification or regression task; {self.data.name} is a causal-LM task")
        n, batch_size = self._split()
        self._ready(rank_map)
        with self._scoring(rank_map):
            preds, losses = predict(self.model, self.val_set, list(range(n)), self.tokenizer.pad_token_id, batch_size)
        return preds[0], losses[0]

    def _score_until_decided(self) -> tuple[float, float, float]:
        """(metric or estimate, mean loss, fraction read) of the model as it is (in ``_scoring``): see the module's early stopping."""
        data = self.val_set
        n, batch_size = self._split()
        if self._parts is None:  # the same parts for every map: dealt once
            self._parts = stratified_parts([len(ids) for ids in data.ids[:n]], self.chunks, self.seed, batch_size)
        parts = self._parts
        labels = data.labels[:n].numpy()
        reference = self._best[self.stop_top - 1] if len(self._best) >= self.stop_top else None
        level = 1 - (1 - self.early_stop) / (self.chunks - 1)  # Bonferroni over the looks after each part but the last
        preds, loss, read = np.empty(n, dtype=labels.dtype), 0.0, 0
        for look, part in enumerate(parts):
            got, losses = predict(self.model, data, part.tolist(), self.tokenizer.pad_token_id, batch_size)
            preds[part], loss, read = got[0], loss + float(losses[0].sum()), read + len(part)
            if reference is not None and read < n:
                seen = np.concatenate(parts[: look + 1])
                bound = paired_upper_bound(data.metric, preds[seen], reference[1][seen], labels[seen], level, seed=look)
                if bound < 0:  # the agent gets the paired estimate: the bound alone ranked stopped maps near the reference
                    observed = (compute_metric(data.metric, preds[seen], labels[seen])
                                - compute_metric(data.metric, reference[1][seen], labels[seen]))
                    return reference[0] + min(observed, bound), loss / read, read / n
        metric = compute_metric(data.metric, preds, labels)
        self._best = sorted([*self._best, (metric, preds)], key=lambda kept: -kept[0])[: self.stop_top]
        return metric, loss / n, 1.0

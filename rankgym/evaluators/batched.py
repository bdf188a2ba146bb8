"""The ``batched`` evaluator: up to K rank maps fine-tuned together on one shared frozen base.

Each configuration gets the adapters, head initialisation, data and optimiser updates it would get
from the ``finetune`` evaluator alone (equal losses at every step, to float tolerance); the frozen
base runs once per batch for all of them, which is what makes a GPU busy. Results can differ from
``finetune`` in the last bits, so its store key is its own (evaluator ``batched``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from rankgym.backbones import head_modules
from rankgym.core import Evaluation
from rankgym.errors import ConfigError
from rankgym.evaluators.finetune import FinetuneEvaluator
from rankgym.lora.batched import BatchedLinear, BatchedLoRALayer
from rankgym.lora.inject import replace_module
from rankgym.rankmap import RankMap
from rankgym.training import finetune_copies, module_generator


class BatchedEvaluator(FinetuneEvaluator):
    """:class:`FinetuneEvaluator` that trains ``k`` maps per call of :meth:`evaluate_many`.

    Args:
        k: configurations per batch (the batch size the GPU sees is k × recipe.batch_size).
        **kwargs: as :class:`FinetuneEvaluator`.
    """

    name = "batched"
    version = 4  # as finetune v4

    def __init__(self, *args: Any, k: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.data.causal_lm:  # K copies of a vocabulary-sized output would not fit where batching pays
            raise ConfigError("the batched evaluator trains classification heads side by side; for a causal-LM task use "
                              "evaluator='finetune', 'warmstart' or 'elastic'")
        self.k = k
        policy = self.alpha_policy
        self.layers: dict[str, BatchedLoRALayer] = {}
        for info in self.modules:
            layer = BatchedLoRALayer(self.model.get_submodule(info.name), k, self.max_rank, **policy).to(self.device)
            replace_module(self.model, info.name, layer)
            self.layers[info.name] = layer
        self.heads: list[BatchedLinear] = []  # every linear layer of the head, in init_head's order
        for name, head in head_modules(self.model).items():
            pretrained = getattr(head, "pretrained_state", None) is not None
            for leaf_name, leaf in [(n, m) for n, m in head.named_modules() if isinstance(m, nn.Linear)]:
                batched = BatchedLinear(leaf, k, pretrained).to(self.device)
                replace_module(self.model, f"{name}.{leaf_name}" if leaf_name else name, batched)
                self.heads.append(batched)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for module in [*self.layers.values(), *self.heads]:
            for name, p in module.named_parameters():
                p.requires_grad_(not name.startswith("base."))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "evaluator": f"{self.name}-v{self.version}"}

    def evaluate(self, rank_map: RankMap) -> Evaluation:
        return self.evaluate_many([rank_map])[0]

    def evaluate_many(self, rank_maps: list[RankMap]) -> list[Evaluation]:
        """Fine-tune and validate ``len(rank_maps)`` maps (at most k) in one pass over the data."""
        if not 1 <= len(rank_maps) <= self.k:
            raise ValueError(f"evaluate_many takes 1..{self.k} rank maps, got {len(rank_maps)}")
        with self.private_rng():
            start = time.perf_counter()
            self._initialise(rank_maps)
            self.last_results = finetune_copies(self.model, self.train_set, self.val_set, self.tokenizer.pad_token_id,
                                                self.recipe, self.seed, self.progress, copies=len(rank_maps))
            seconds = (time.perf_counter() - start) / len(rank_maps)
        return [
            Evaluation(r.metric, self.trainable_params(m), seconds, r.val_loss, r.train_loss, str(self.device), error=r.error)
            for r, m in zip(self.last_results, rank_maps)
        ]

    def _initialise(self, rank_maps: list[RankMap]) -> None:
        """Each configuration's adapters and head, drawn exactly as ``init_adapters`` draws them alone."""
        for name, layer in self.layers.items():
            layer.set_ranks([m.ranks.get(name, 0) for m in rank_maps], [module_generator(self.seed, name) for _ in rank_maps])
        generators = [torch.Generator().manual_seed(self.seed) for _ in rank_maps]
        std = getattr(self.model.config, "initializer_range", 0.02)
        with torch.no_grad():
            for head in self.heads:
                head.active = len(rank_maps)
                if head.initial is not None:
                    head.weight.copy_(head.initial[0])
                    if head.bias is not None:
                        head.bias.copy_(head.initial[1])
                    continue
                for i, g in enumerate(generators):
                    head.weight[i] = torch.empty(head.out_features, head.in_features).normal_(0.0, std, generator=g).to(head.weight)
                if head.bias is not None:
                    head.bias.zero_()

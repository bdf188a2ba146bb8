"""PEFT's own rank allocators, run on a task and read back as rank maps: AdaLoRA and EVA.

Both work in PEFT's currency, a total count of ranks (``target_r`` or ``r`` times the module
count), not parameters; the map they return is projected onto the search's parameter budget by
the environment like every other map. The ranks are read from PEFT's own state after the run:
AdaLoRA's final ``rank_pattern`` masks, and for EVA the rank each LoRA layer holds (a module EVA
gives rank 0 is no LoRA layer any more).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rankgym.core import ModuleInfo
from rankgym.recipe import Recipe
from rankgym.taskdata import Encoded
from rankgym.training import batch_inputs, finetune, training_order


def adalora_ranks(model: nn.Module, modules: Sequence[ModuleInfo], train: Encoded, validation: Encoded, pad_id: int,
                  target_rank: int, recipe: Recipe = Recipe(), seed: int = 0, init_ratio: float = 1.5) -> dict[str, int]:
    """Fine-tune ``model`` with PEFT's AdaLoRA (``init_ratio`` x ``target_rank`` at the start, pruned
    to ``target_rank`` on average by ``update_and_allocate``) and return each module's final rank.

    Schedule as in the AdaLoRA paper's GLUE runs, in proportions of the steps: no pruning for the
    first 10 %, the budget fixed for the last 20 %, masks updated every 1 %. The loop is rankgym's
    (:func:`~rankgym.training.finetune`), which computes the task loss itself, so PEFT's orthogonality
    regulariser (added only to a loss the model returns) is not applied.
    """
    from peft import AdaLoraConfig, get_peft_model

    steps = len(training_order(train, recipe.batch_size, seed))
    config = AdaLoraConfig(
        init_r=max(target_rank + 1, round(init_ratio * target_rank)), target_r=target_rank,
        tinit=steps // 10, tfinal=steps // 5, deltaT=max(1, steps // 100), total_step=steps,
        lora_alpha=2 * target_rank, lora_dropout=0.0, target_modules=[m.name for m in modules], task_type=_task_type(train),
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    finetune(peft_model, train, validation, pad_id, recipe, seed, description="adalora",
             after_step=peft_model.base_model.update_and_allocate)
    pattern = peft_model.peft_config["default"].rank_pattern or {}
    suffix = ".lora_E.default"
    ranks = {m.name: config.init_r for m in modules}  # before any pruning every module holds init_r
    ranks.update({name.removesuffix(suffix): int(sum(mask)) for name, mask in pattern.items()})
    return ranks


def _task_type(train: Encoded) -> str:
    return "CAUSAL_LM" if train.targets is not None else "SEQ_CLS"  # SEQ_CLS keeps the task head trainable


def eva_ranks(model: nn.Module, modules: Sequence[ModuleInfo], train: Encoded, pad_id: int, rank: int, rho: float = 2.0,
              batches: int = 16, batch_size: int = 32, seed: int = 0) -> dict[str, int]:
    """PEFT's EVA: ranks (and initial factors) from SVDs of each module's input activations on
    ``batches`` training batches, redistributing ``rank`` x modules ranks with at most ``rho`` x
    ``rank`` per module. Training-free. Classification batches carry no token labels, so the
    label mask is off (``use_label_mask=False``) and only padding is left out of the SVDs.
    """
    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=[m.name for m in modules], task_type=_task_type(train),
                        init_lora_weights="eva", eva_config=EvaConfig(rho=rho, use_label_mask=False))
    peft_model = get_peft_model(model, config)
    device = next(model.parameters()).device
    order = training_order(train, batch_size, seed)[:batches]
    loader = [batch_inputs(train, idx, pad_id, device) for idx in order]
    initialize_lora_eva_weights(peft_model, loader, show_progress_bar=False)
    held = {name.replace("base_model.model.", ""): layer.r["default"] for name, layer in peft_model.named_modules()
            if isinstance(layer, LoraLayer) and "default" in layer.r}
    return {m.name: int(held.get(m.name, 0)) for m in modules}

"""Put a rank map on a model: wrap modules in place, choose what trains, save and load adapters."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rankgym.backbones import head_modules
from rankgym.lora.layer import LoRALayer, ShrinkMode
from rankgym.rankmap import RankMap, RankMapError

ADAPTER_FILE = "adapter.safetensors"
RANK_MAP_FILE = "rank_map.json"


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """Every wrapped module of ``model`` by full name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` where the submodule ``name`` of ``model`` is (a dotted path); returns the one it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


def apply_rank_map(
    model: nn.Module,
    rank_map: RankMap,
    max_rank: int | None = None,
    shrink: ShrinkMode = "prefix",
    generator: torch.Generator | None = None,
) -> dict[str, LoRALayer]:
    """Wrap the named modules in place (or re-rank those already wrapped) and set trainable flags.

    ``max_rank`` is the rank new wrappers allocate (at least each module's rank, at most
    min(in, out)), so later growth needs no reallocation. Only adapter factors and the task head
    require gradients afterwards.
    """
    rank_map.validate(model)
    layers = lora_layers(model)
    for name, rank in rank_map.ranks.items():
        layer = layers.get(name)
        if layer is None:
            base = model.get_submodule(name)
            limit = min(base.weight.shape)
            layer = LoRALayer(
                base,
                rank,
                max_rank=min(max(rank, max_rank or rank), limit),
                alpha=rank_map.alpha,
                alpha_mode=rank_map.alpha_mode,
                rslora=rank_map.rslora,
            )
            if generator is not None:
                layer.reset_adapter(rank, generator)
            replace_module(model, name, layer)
            layers[name] = layer
        else:
            layer.alpha, layer.alpha_mode, layer.rslora = rank_map.alpha, rank_map.alpha_mode, rank_map.rslora
            layer.set_rank(rank, shrink=shrink, generator=generator)
    set_trainable(model)
    return {name: layers[name] for name in rank_map.ranks}


def set_trainable(model: nn.Module) -> None:
    """Freeze everything but the LoRA factors and the task head."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    for head in head_modules(model).values():
        for p in head.parameters():
            p.requires_grad_(True)


def save_adapter(model: nn.Module, directory: str | Path, rank_map: RankMap) -> Path:
    """Write the active adapter factors and the task head (safetensors) plus the rank map (JSON)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        if layer.rank:
            tensors[f"{name}.lora_A"] = layer.lora_A[: layer.rank].detach().contiguous().cpu()
            tensors[f"{name}.lora_B"] = layer.lora_B[:, : layer.rank].detach().contiguous().cpu()
    for head_name, head in head_modules(model).items():
        for pname, p in head.named_parameters():
            tensors[f"{head_name}.{pname}"] = p.detach().contiguous().cpu()
    save_file(tensors, str(directory / ADAPTER_FILE), metadata={"format": "rankgym.adapter"})
    rank_map.save(directory / RANK_MAP_FILE)
    return directory


def save_peft_adapter(model: nn.Module, base: nn.Module, directory: str | Path, rank_map: RankMap) -> Path:
    """Write ``model``'s trained adapter as a PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

    ``base`` is a fresh copy of the backbone ``model`` was built from (it is wrapped in place).
    The folder holds ``adapter_config.json`` (``task_type="SEQ_CLS"``, the head as
    ``modules_to_save``; ``"CAUSAL_LM"`` for a language model, which has no head) and
    ``adapter_model.safetensors`` with the trained factors (rank-0 modules left out) and the task head.
    """
    from peft import get_peft_model

    layers = {name: layer for name, layer in lora_layers(model).items() if layer.rank}
    heads = list(head_modules(model))
    config = rank_map.replace({name: layer.rank for name, layer in layers.items()}).to_peft_config(
        task_type="SEQ_CLS" if heads else "CAUSAL_LM", modules_to_save=list(heads) or None)  # a copy: PEFT extends the list it is given
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, layer in layers.items():
            target = peft_model.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_A[: layer.rank])
            target.lora_B["default"].weight.copy_(layer.lora_B[:, : layer.rank])
        for name in heads:
            peft_model.base_model.model.get_submodule(name).modules_to_save["default"].load_state_dict(model.get_submodule(name).state_dict())
    peft_model.save_pretrained(str(directory))
    return Path(directory)


def load_adapter(model: nn.Module, directory: str | Path) -> RankMap:
    """Apply the saved rank map to ``model`` and load the saved factors and head into it."""
    directory = Path(directory)
    if not (directory / ADAPTER_FILE).is_file():
        raise RankMapError(f"{directory}: no {ADAPTER_FILE} here; is this a folder written by save_adapter or `rankgym finetune`?")
    rank_map = RankMap.load(directory / RANK_MAP_FILE)
    layers = apply_rank_map(model, rank_map)
    tensors = load_file(str(directory / ADAPTER_FILE))
    with torch.no_grad():
        for name, layer in layers.items():
            if layer.rank:
                layer.lora_A[: layer.rank] = tensors.pop(f"{name}.lora_A")
                layer.lora_B[:, : layer.rank] = tensors.pop(f"{name}.lora_B")
        params = dict(model.named_parameters())
        for key, value in tensors.items():
            params[key].copy_(value)
    return rank_map


def merge(model: nn.Module) -> None:
    """Merge every adapter into its frozen weight (inference at the base model's cost)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()

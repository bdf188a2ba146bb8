"""RankMap: which rank each adapted module gets, with validation, JSON and PEFT interop.

Module names are the full dotted names of ``model.named_modules()``; rank 0 means no adapter.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from torch import nn

from rankgym.errors import FileError, RankgymError
from rankgym.files import read_json
from rankgym.lora.layer import AlphaMode, LoRALayer, adaptable, base_shape

FORMAT = "rankgym.rankmap"
FORMAT_VERSION = 1


CONV1D_NAMES = ("c_attn", "c_proj", "c_fc")  # GPT-2's Conv1D modules




class RankMapError(RankgymError, ValueError):
    """A rank map that does not fit a model, or a rank-map file that cannot be read."""


def module_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) of every module a rank map may name: linear layers, Conv1D, and wrapped ones."""
    shapes: dict[str, tuple[int, int]] = {}
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue  # the frozen base inside a LoRALayer is not a module of its own here
        if isinstance(module, LoRALayer):
            wrapped.append(name)
            shapes[name] = (module.in_features, module.out_features)
        elif adaptable(module):
            shapes[name] = base_shape(module)
    return shapes


@dataclass
class RankMap:
    """Per-module LoRA ranks plus the alpha policy that turns a rank into a scale.

    Args:
        ranks: full module name -> rank (integer >= 0; 0 = no adapter).
        alpha: lora_alpha for every module (``alpha_mode="fixed"``), or lora_alpha / r (``"ratio"``).
        alpha_mode: ``"fixed"`` (PEFT's ``lora_alpha``) or ``"ratio"`` (scale independent of rank).
        rslora: scale by alpha / sqrt(r) instead of alpha / r.
        provenance: where the map comes from (backbone, task, metric, ...), carried along.
    """

    ranks: dict[str, int]
    alpha: float = 8.0
    alpha_mode: AlphaMode = "fixed"
    rslora: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def uniform(cls, modules: Iterable[str], rank: int, **kwargs: Any) -> "RankMap":
        return cls({name: rank for name in modules}, **kwargs)

    def __len__(self) -> int:
        return len(self.ranks)

    def lora_alpha(self, name: str) -> float:
        """The lora_alpha PEFT needs for module ``name``."""
        return self.alpha * self.ranks[name] if self.alpha_mode == "ratio" else self.alpha

    def replace(self, ranks: Mapping[str, int]) -> "RankMap":
        """The same policy and provenance with other ranks."""
        return RankMap(dict(ranks), self.alpha, self.alpha_mode, self.rslora, dict(self.provenance))

    # -- checks and counts --------------------------------------------------------------------
    def problems(self, model: nn.Module) -> list[str]:
        """Every reason this map does not fit ``model`` (empty when it fits)."""
        shapes = module_shapes(model)
        named = dict(model.named_modules())
        found = []
        for name, r in self.ranks.items():
            if name not in named:
                close = difflib.get_close_matches(name, list(shapes), n=1)
                found.append(f"unknown module {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
                continue
            if name not in shapes:
                found.append(f"{name!r} is a {type(named[name]).__name__}, which cannot be adapted (only Linear and Conv1D)")
                continue
            if isinstance(r, bool) or not isinstance(r, int):
                found.append(f"{name!r} has rank {r!r}, not an integer")
                continue
            if r < 0:
                found.append(f"{name!r} has negative rank {r}")
                continue
            limit = min(shapes[name])
            if r > limit:
                found.append(f"{name!r} has rank {r}, above min(in, out) = {limit}")
        return found

    def validate(self, model: nn.Module) -> "RankMap":
        """Raise one :class:`RankMapError` naming every offending entry; return ``self`` when it fits."""
        found = self.problems(model)
        if found:
            raise RankMapError(f"rank map does not fit the model ({len(found)} problem{'s' * (len(found) > 1)}): " + "; ".join(found))
        return self

    def trainable_params(self, model: nn.Module) -> int:
        """Adapter parameters of this map on ``model``: the sum of r · (in + out), from shapes."""
        shapes = module_shapes(model)
        return sum(r * sum(shapes[name]) for name, r in self.ranks.items())

    def key(self) -> str:
        """Canonical JSON of what decides training (ranks and alpha policy), for caches."""
        return json.dumps(
            {"ranks": dict(sorted(self.ranks.items())), "alpha": self.alpha, "alpha_mode": self.alpha_mode, "rslora": self.rslora},
            sort_keys=True,
            separators=(",", ":"),
        )

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "alpha": self.alpha,
            "alpha_mode": self.alpha_mode,
            "rslora": self.rslora,
            "provenance": self.provenance,
            "ranks": dict(self.ranks),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "rank map") -> "RankMap":
        if not isinstance(data, dict):
            raise RankMapError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise RankMapError(f"{source}: 'format' is {data['format']!r}, not {FORMAT!r}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise RankMapError(f"{source}: format_version {version!r} is not supported (this rankgym reads {FORMAT_VERSION})")
        ranks = data.get("ranks")
        if not isinstance(ranks, dict) or not ranks:
            raise RankMapError(f"{source}: needs a non-empty 'ranks' object mapping module names to integer ranks")
        bad = [f"{k!r}: {v!r}" for k, v in ranks.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            raise RankMapError(f"{source}: ranks must be integers >= 0, got " + ", ".join(bad))
        mode = data.get("alpha_mode", "fixed")
        if mode not in ("fixed", "ratio"):
            raise RankMapError(f"{source}: alpha_mode must be 'fixed' or 'ratio', got {mode!r}")
        alpha = data.get("alpha", 8.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise RankMapError(f"{source}: alpha must be a positive number, got {alpha!r}")
        return cls(dict(ranks), float(alpha), mode, bool(data.get("rslora", False)), dict(data.get("provenance") or {}))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RankMap":
        """A rank map file, or a PEFT ``adapter_config.json`` (or the folder holding one) read as a rank map."""
        path = Path(path)
        if path.is_dir() and (path / "adapter_config.json").is_file():
            path = path / "adapter_config.json"
        try:
            data = read_json(path, "a rank map (or a PEFT adapter_config.json)")
        except FileError as err:
            raise RankMapError(str(err)) from None
        if isinstance(data, dict) and "peft_type" in data:
            return cls._from_peft_file(data, path)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def _from_peft_file(cls, data: dict[str, Any], path: Path) -> "RankMap":
        from dataclasses import fields

        from peft import LoraConfig

        if data.get("peft_type") != "LORA":
            raise RankMapError(f"{path}: a PEFT config of type {data.get('peft_type')!r}; rankgym reads LoRA configs (peft_type LORA)")
        known = {f.name for f in fields(LoraConfig)} - {"peft_type"}  # fields of other PEFT versions are ignored, as PEFT does
        try:
            config = LoraConfig(**{k: v for k, v in data.items() if k in known})
            rank_map = cls.from_peft_config(config)
            return cls.from_dict(rank_map.to_dict(), source=str(path))  # the same checks as a rank map file
        except RankMapError as err:
            raise RankMapError(f"{path}: {err}") from None
        except (TypeError, ValueError, AttributeError, KeyError) as err:  # LoraConfig's own checks of the fields
            raise RankMapError(f"{path}: not a LoRA config PEFT accepts ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None

    # -- PEFT ------------------------------------------------------------------------------------
    @property
    def fan_in_fan_out(self) -> bool:
        """Whether the modules are GPT-2's Conv1D (weights stored in x out), by their names: the one
        rule every export uses (a GPT-2 map naming only ``c_proj`` modules included)."""
        return any(name.rsplit(".", 1)[-1] in CONV1D_NAMES for name in self.ranks)

    def to_peft_config(self, fan_in_fan_out: bool | None = None, **kwargs: Any):
        """A ``peft.LoraConfig`` with the same rank on every module.

        Target modules are the full names (rank-0 modules left out: PEFT refuses r=0); every
        module gets an escaped, full-name ``rank_pattern`` key, since PEFT matches those keys as
        regexes against the end of module names. ``fan_in_fan_out`` defaults to
        :attr:`fan_in_fan_out`. Extra keyword arguments go to ``LoraConfig`` (``modules_to_save``,
        ``task_type``, ...); ``task_type`` defaults to the one the map's evaluator recorded in its
        provenance (``CAUSAL_LM`` for a language model, else ``SEQ_CLS``).
        """
        from peft import LoraConfig

        active = {name: r for name, r in self.ranks.items() if r > 0}
        if not active:
            raise RankMapError("every module has rank 0: there is no adapter to export to PEFT")
        default_r = Counter(active.values()).most_common(1)[0][0]
        alpha_pattern = {re.escape(n): self.lora_alpha(n) for n in active} if self.alpha_mode == "ratio" else {}
        kwargs.setdefault("task_type", self.provenance.get("peft_task_type", "SEQ_CLS"))
        return LoraConfig(
            r=default_r,
            lora_alpha=self.alpha * default_r if self.alpha_mode == "ratio" else self.alpha,
            target_modules=sorted(active),
            rank_pattern={re.escape(n): r for n, r in active.items()},
            alpha_pattern=alpha_pattern,
            use_rslora=self.rslora,
            lora_dropout=0.0,
            fan_in_fan_out=self.fan_in_fan_out if fan_in_fan_out is None else fan_in_fan_out,
            **kwargs,
        )

    @classmethod
    def from_peft_config(cls, config: Any, model: nn.Module | None = None) -> "RankMap":
        """The rank map a ``peft.LoraConfig`` (or a folder holding ``adapter_config.json``) describes.

        Matching uses PEFT's own rules. With ``model``, every module PEFT would target is listed;
        without it, ``target_modules`` must be a list of full module names (as :meth:`to_peft_config` writes).
        Rank-0 modules of an exported map do not come back: PEFT has no rank 0, they are simply untargeted.
        """
        from peft import LoraConfig
        from peft.tuners.tuners_utils import check_target_module_exists
        from peft.utils.other import get_pattern_key

        if isinstance(config, (str, Path)):
            config = LoraConfig.from_pretrained(str(config))
        if model is not None:
            candidates = list(module_shapes(model))
        elif isinstance(config.target_modules, (list, set, tuple)):
            candidates = sorted(config.target_modules)
        else:
            raise RankMapError("target_modules is a regex: pass the model so that rankgym can resolve which modules it names")
        ranks: dict[str, int] = {}
        alphas: dict[str, float] = {}
        for name in candidates:
            if not check_target_module_exists(config, name):
                continue
            ranks[name] = int(config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r))
            alphas[name] = float(config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha))
        distinct = set(alphas.values())
        if len(distinct) <= 1:
            alpha, mode = (distinct.pop() if distinct else float(config.lora_alpha)), "fixed"
        else:
            ratios = {alphas[n] / ranks[n] for n in alphas}
            if len(ratios) != 1:
                raise RankMapError("this LoraConfig's alphas follow neither a fixed alpha nor a fixed alpha/r ratio; rankgym cannot express it")
            alpha, mode = ratios.pop(), "ratio"
        return cls(ranks, alpha, mode, bool(config.use_rslora))

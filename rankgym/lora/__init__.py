"""rankgym's own LoRA layers: ``layer`` holds the maths, ``inject`` puts them on a model."""

from rankgym.lora.layer import LoRALayer, adaptable, lora_scale

__all__ = ["LoRALayer", "adaptable", "lora_scale"]

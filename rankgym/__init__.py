"""rankgym: choosing LoRA ranks as a reinforcement-learning problem.

Importing the package registers the ``RankSearch-*`` Gymnasium environments (cheaply: no model
is loaded). The public names below are imported lazily so that ``rankgym --help`` stays fast.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "RankMap": "rankgym.rankmap",
    "RankMapError": "rankgym.rankmap",
    "LoRALayer": "rankgym.lora.layer",
    "apply_rank_map": "rankgym.lora.inject",
    "save_adapter": "rankgym.lora.inject",
    "load_adapter": "rankgym.lora.inject",
    "load_backbone": "rankgym.backbones",
    "load_task": "rankgym.tasks",
    "register_task": "rankgym.registry",
    "Recipe": "rankgym.training",
    "FinetuneEvaluator": "rankgym.evaluators.finetune",
    "RankSearchEnv": "rankgym.envs.rank_search",
    "EvaluationStore": "rankgym.store",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'rankgym' has no attribute {name!r}")


from rankgym.registry import register_envs  # noqa: E402

register_envs()

"""What a step costs: every evaluator turns a rank map into an Evaluation behind one interface."""

from rankgym.evaluators.base import Evaluation, Evaluator, ModuleInfo

__all__ = ["Evaluation", "Evaluator", "ModuleInfo"]

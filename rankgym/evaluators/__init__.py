"""What a step costs: every evaluator turns a rank map into an Evaluation behind one interface."""

from rankgym.core import Evaluation, ModuleInfo
from rankgym.evaluators.base import Evaluator

__all__ = ["Evaluation", "Evaluator", "ModuleInfo"]

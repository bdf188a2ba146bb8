"""The Gymnasium environment (see rank_search.py); ids are registered by ``import rankgym``."""

from rankgym.envs.rank_search import RankSearchEnv

__all__ = ["RankSearchEnv"]

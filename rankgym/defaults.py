"""Defaults a search shares between the command line and the Python API, one source each.

A module of plain values, so that the CLI reads them without importing torch (``rankgym --help``
stays fast); :class:`rankgym.harness.SearchArgs` and :class:`rankgym.promotion.Promotion` use them too.
"""

BUDGET = 64  # evaluations a search spends (environment steps or maps)
PROMOTE = 3  # distinct top maps retrained with the full recipe at the end (0: no promotion)
PROMOTE_SEEDS = 3  # seeds of every promotion retrain
PROMOTE_HALVING = 3.0  # a candidate this many seed spreads behind the leader after a seed stops (0: every seed)

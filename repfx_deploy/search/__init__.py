"""Hardware-aware search: the most accurate assignment of a recipe's pass settings within budgets on a target.

One module per job: ``config`` (budgets and settings), ``study`` (Optuna storage, samplers, resume),
``objective`` (one trial: choose, score, record; the run loop), ``workers`` (several processes on one study),
``scorer``/``proxy``/``predictor`` (scoring a candidate without fine-tuning it), ``front``/``measure``/``report``
/``recipe_out`` (what the study found). Only the light config names are re-exported here: importing the package
must not import Optuna.
"""

from repfx_deploy.search.config import Budget, SearchConfig, parse_budget

__all__ = ["Budget", "SearchConfig", "parse_budget"]

from embedtrain.objectives import compression, infonce, reconstruction  # noqa: F401  (register themselves)
from embedtrain.objectives.registry import get_objective, objective_names, register

__all__ = ["get_objective", "objective_names", "register"]

"""Training objectives. Importing the package registers the built-in ones (each module registers itself)."""
from embedtrain.objectives import compression, infonce, reconstruction  # noqa: F401
from embedtrain.objectives.registry import get_objective, objective_names, register

__all__ = ["get_objective", "objective_names", "register"]

from embedtrain.objectives import infonce  # noqa: F401  (registers "infonce")
from embedtrain.objectives.registry import get_objective, objective_names, register

__all__ = ["get_objective", "objective_names", "register"]

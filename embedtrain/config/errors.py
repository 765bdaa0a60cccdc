"""The error a user fixes in a recipe (its message names the file or `--set`, and the key)."""


class RecipeError(ValueError):
    """A recipe problem the user must fix; the message names the file and key."""

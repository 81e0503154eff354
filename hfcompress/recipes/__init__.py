from .recipe import Recipe, RecipeConfig, apply_overrides, load_recipe, parse_recipe
from .registry import CALLBACKS, STAGES, register_callback, register_stage
from .runner import run_recipe

__all__ = [
    "CALLBACKS",
    "STAGES",
    "Recipe",
    "RecipeConfig",
    "apply_overrides",
    "load_recipe",
    "parse_recipe",
    "register_callback",
    "register_stage",
    "run_recipe",
]

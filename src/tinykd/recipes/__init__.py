"""Recipes: typed, validated YAML that describes a whole run."""

from tinykd.recipes.load import builtin_recipes, dump_recipe, load_recipe, validate_recipe
from tinykd.recipes.schema import Recipe

__all__ = ["Recipe", "builtin_recipes", "dump_recipe", "load_recipe", "validate_recipe"]

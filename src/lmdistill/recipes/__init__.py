"""Black-box distillation recipes, end to end: teacher data -> trained student -> evaluation.

One YAML per method (configs/recipes/): in-context learning distillation (`icl`), chain-of-thought
distillation incl. distilling step-by-step (`cot`), instruction-following distillation (`instruct`).
"""

from lmdistill.recipes.config import METHODS, RecipeConfig, load_recipe_config
from lmdistill.recipes.run import run_recipe

__all__ = ["METHODS", "RecipeConfig", "load_recipe_config", "run_recipe"]

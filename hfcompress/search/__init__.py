"""``hfcompress search``: find the recipe settings with the best metric under a latency/size budget, with Optuna.

See :mod:`hfcompress.search.study` for the study, its storage and how several workers share it, and
:mod:`hfcompress.search.config` for the search space a recipe declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..artifacts import SEARCH_STORAGE_FILE
from ..errors import ConfigError
from ..recipes.recipe import load_yaml
from .config import SearchSpace, check_space, load_space, parse_budget
from .report import best_recipe, summarise, write_search_outputs
from .study import SearchObjective, TrialSettings, load_study, metric_direction, open_storage, run_phase, train_proxy_front_in_full


def run_search(
    recipe_path: str | Path,
    output_dir: str | Path,
    budget: Optional[str] = None,
    tolerance: float = 0.5,
    trials: int = 10,
    space_path: Optional[str | Path] = None,
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    seed: Optional[int] = None,
    threads: int = 2,
    latency_samples: int = 64,
) -> dict:
    """Search, resume or join the study, then write the outputs; returns search.json's content and ``paths``.

    The space and the budget are checked against the recipe before any training (a ConfigError).
    """
    recipe_data = load_yaml(recipe_path)
    space: SearchSpace = load_space(recipe_data, load_yaml(space_path) if space_path else None, str(recipe_path))
    recipe_data = {k: v for k, v in recipe_data.items() if k != "search"}
    budget_limits = parse_budget(budget)
    if tolerance < 0 or trials < 1 or threads < 1 or latency_samples < 1:
        raise ConfigError("--tolerance must be >= 0 and --trials, --threads and --latency-samples positive")
    check_space(space, recipe_data)
    output_dir = Path(output_dir).resolve()  # trial directories and best_recipe.yaml's output_dir hold wherever they are run from
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output {output_dir} is a file: give a directory for the search's results and trials")
    output_dir.mkdir(parents=True, exist_ok=True)
    name = study_name or str(recipe_data["name"])
    direction = metric_direction(space.metric or "accuracy")
    db = open_storage(storage or f"sqlite:///{output_dir / SEARCH_STORAGE_FILE}")
    settings = TrialSettings(output_dir, tolerance, threads, latency_samples)
    studies = []
    if space.proxy:
        proxy = load_study(db, f"{name}:proxy", direction, seed)
        run_phase(proxy, SearchObjective(recipe_data, space, settings, "proxy"), trials)
        full = load_study(db, f"{name}:full", direction, seed)
        train_proxy_front_in_full(proxy, full, SearchObjective(recipe_data, space, settings, "full"))
        studies = [("proxy", proxy), ("full", full)]
    else:
        study = load_study(db, name, direction, seed)
        run_phase(study, SearchObjective(recipe_data, space, settings, "full"), trials)
        studies = [("full", study)]
    result = summarise(studies, budget_limits, direction == "maximize", name)
    if result is None:
        raise ConfigError(f"no trial of study '{name}' finished: see the errors above, fix the recipe or the space and run again")
    result["paths"] = {k: str(v) for k, v in write_search_outputs(result, best_recipe(recipe_data, space, result["chosen"], output_dir), output_dir).items()}
    return result


__all__ = ["run_search"]

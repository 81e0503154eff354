"""What a search writes: ``search.json`` (trials, Pareto front, CPU time, the chosen point and its gate), ``search.md``,
``search.png`` (metric against latency, the front highlighted) and ``best_recipe.yaml`` (the chosen point as a plain recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ..artifacts import BEST_RECIPE_FILE, SEARCH_CHART_FILE, SEARCH_RESULTS_FILE, SEARCH_TABLE_FILE
from ..evaluation.paired import describe_gate
from ..evaluation.report import pyplot_or_warn, save_figure
from ..recipes.recipe import apply_overrides
from ..utils.io import atomic_write_json, atomic_write_text
from .config import SearchSpace, override


def trial_record(trial, phase: str, front_numbers: set[int]) -> dict:
    attrs = trial.user_attrs
    return {
        "number": trial.number, "phase": phase, "state": trial.state.name, "settings": attrs.get("settings"),
        "metric": attrs.get("metric"), "accuracy": attrs.get("value"), "latency_ms": attrs.get("latency_ms"),
        "size_mb": attrs.get("size_mb"), "cpu_seconds": attrs.get("cpu_seconds"), "gate": attrs.get("gate"),
        "trial_dir": attrs.get("trial_dir"), "worker": attrs.get("worker"), "on_front": trial.number in front_numbers,
    }


def budget_excess(record: dict, budget: dict[str, float]) -> float:
    """How far a point is over the budget: the sum of its relative excesses (0 when it meets every limit)."""
    return sum(max(0.0, record[key] / limit - 1) for key, limit in budget.items())


def choose(front: list[dict], budget: dict[str, float], higher_is_better: bool = True) -> tuple[dict, bool]:
    """The chosen point of the front and whether it meets the budget.

    Within the budget, as Intel Neural Compressor's accuracy-aware tuning does: the fastest point whose
    gate says it is within the tolerance of the reference, else the most accurate. No point within
    the budget: the closest one (smallest relative excess, then the most accurate).
    """
    sign = 1 if higher_is_better else -1
    fitting = [r for r in front if budget_excess(r, budget) == 0]
    if not fitting:
        return min(front, key=lambda r: (budget_excess(r, budget), -sign * r["accuracy"])), False
    passing = [r for r in fitting if (r["gate"] or {}).get("within_margin")]
    if passing:
        return min(passing, key=lambda r: (r["latency_ms"], r["size_mb"])), True
    return max(fitting, key=lambda r: (sign * r["accuracy"], -r["latency_ms"])), True


def budget_sentence(chosen: dict, budget: dict[str, float], met: bool) -> str:
    point = f"trial {chosen['number']} ({chosen['metric']} {chosen['accuracy']:.4f}, {chosen['latency_ms']:.2f} ms, {chosen['size_mb']:.2f} MB)"
    if not budget:
        return f"No budget was given; the chosen point is {point}."
    limits = " and ".join(f"{key} <= {limit:g}" for key, limit in budget.items())
    if met:
        return f"The budget ({limits}) is met by {point}."
    return f"The budget was not met: no trial reached {limits}; the closest point found is {point}."


def best_recipe(recipe_data: dict, space: SearchSpace, chosen: dict, output_dir: Path) -> dict:
    """The chosen settings written into the recipe (no proxy overrides, no search block), with its own output directory."""
    plain = {k: v for k, v in recipe_data.items() if k != "search"}
    return apply_overrides(plain, [*space.overrides(chosen["settings"]), override("output_dir", str(output_dir / "best"))])


def render_markdown(result: dict) -> str:
    metric = result["metric"]
    lines = [f"# Search: {result['study_name']}", "", result["budget_sentence"], ""]
    if result["gate"]:
        lines += [f"Accuracy gate against `{result['gate']['reference']}`: {describe_gate('chosen point', result['gate'])}.", ""]
    lines += [f"Total CPU time: {result['cpu_seconds']:.0f} s over {len(result['trials'])} trials.", ""]
    header = ["trial", "phase", "settings", metric, "p50 b1 ms", "size MB", "CPU s", "front", "gate"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["trials"]:
        settings = ", ".join(f"`{k.rsplit('.', 1)[-1]}`={v}" for k, v in (r["settings"] or {}).items())
        cells = [str(r["number"]), r["phase"], settings, _fmt(r["accuracy"], 4), _fmt(r["latency_ms"]), _fmt(r["size_mb"]),
                 _fmt(r["cpu_seconds"], 0), "yes" if r["on_front"] else "", (r["gate"] or {}).get("verdict", "–")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def plot(result: dict, path: Path) -> bool:
    """Metric against batch-1 latency for the final round's trials, the Pareto front highlighted; False without matplotlib."""
    plt = pyplot_or_warn(path)
    if plt is None:
        return False
    final = [r for r in result["trials"] if r["phase"] == result["final_phase"] and r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    others = [r for r in final if not r["on_front"]]
    front = sorted((r for r in final if r["on_front"]), key=lambda r: r["latency_ms"])
    ax.scatter([r["latency_ms"] for r in others], [r["accuracy"] for r in others], color="0.6", label="trial")
    ax.plot([r["latency_ms"] for r in front], [r["accuracy"] for r in front], "o-", color="C3", label="Pareto front")
    chosen = result["chosen"]
    ax.scatter([chosen["latency_ms"]], [chosen["accuracy"]], marker="*", s=250, color="C2", zorder=3, label=f"chosen (trial {chosen['number']})")
    if "latency_ms" in result["budget"]:
        ax.axvline(result["budget"]["latency_ms"], color="0.3", linestyle="--", label="latency budget")
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel(result["metric"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Search {result['study_name']}: {len(final)} trials ({result['final_phase']} round)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return True


def write_search_outputs(result: dict, recipe: dict, output_dir: Path) -> dict:
    """Write search.{json,md,png} and best_recipe.yaml; returns the paths written, by kind."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / SEARCH_RESULTS_FILE, "markdown": output_dir / SEARCH_TABLE_FILE,
             "chart": output_dir / SEARCH_CHART_FILE, "best_recipe": output_dir / BEST_RECIPE_FILE}
    atomic_write_json(paths["json"], result)
    atomic_write_text(paths["markdown"], render_markdown(result))
    atomic_write_text(paths["best_recipe"], yaml.safe_dump(recipe, sort_keys=False))
    if not plot(result, paths["chart"]):
        del paths["chart"]
    return paths


def front_numbers(study) -> set[int]:
    return {t.number for t in study.best_trials}


def summarise(studies: list[tuple[str, object]], budget: dict[str, float], higher_is_better: bool, study_name: str) -> Optional[dict]:
    """search.json's content from the studies of each round (proxy first); None when the final round has no finished trial."""
    trials = []
    for phase, study in studies:
        on_front = front_numbers(study) if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) else set()
        trials += [trial_record(t, phase, on_front) for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "FAIL")]
    final_phase = studies[-1][0]
    front = [r for r in trials if r["phase"] == final_phase and r["on_front"]]
    if not front:
        return None
    chosen, met = choose(front, budget, higher_is_better)
    return {
        "study_name": study_name, "metric": chosen["metric"], "budget": budget, "final_phase": final_phase,
        "trials": trials, "front": front, "cpu_seconds": round(sum(r["cpu_seconds"] or 0 for r in trials), 1),
        "chosen": chosen, "budget_met": met, "budget_sentence": budget_sentence(chosen, budget, met), "gate": chosen["gate"],
    }

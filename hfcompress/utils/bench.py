"""What the benchmark scripts (``scripts/bench_*.py``) share: their argument parser and common options,
and the paths and command lines they record, relative to the repository so results read the same on
every machine.

A script puts the repository on ``sys.path`` (so it runs from a checkout without installing) and
then imports this module::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    from hfcompress.utils.bench import bench_parser, ...  # noqa: E402
"""

from __future__ import annotations

import argparse
import operator
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
SST2_DATA = "../shared/assets/data/sst2"
# SmolLM2-135M-Instruct: the asset's get.sh puts the GGUF here, and the benchmarks convert it beside it (HFC_SMOLLM2_DIR moves both)
SMOLLM2_DIR = Path(os.environ.get("HFC_SMOLLM2_DIR", "~/.cache/hfcompress/smollm2")).expanduser()
SMOLLM2_GGUF = SMOLLM2_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_TEACHER = SMOLLM2_DIR / "teacher"  # hfcompress convert-gguf of the GGUF: float32 safetensors
SMOLLM2_GET = REPO.parent / "shared" / "assets" / "models" / "smollm2-135m" / "get.sh"


def smollm2_teacher() -> tuple[Path, Path]:
    """(GGUF, converted checkpoint) of SmolLM2-135M-Instruct: downloaded by the asset's get.sh and converted once, when missing."""
    import subprocess

    if not SMOLLM2_GGUF.is_file():
        subprocess.run(["bash", str(SMOLLM2_GET), str(SMOLLM2_DIR)], check=True)
    if not (SMOLLM2_TEACHER / "config.json").is_file():
        from ..models.gguf import convert_gguf

        convert_gguf(SMOLLM2_GGUF, SMOLLM2_TEACHER, overwrite=True)
    return SMOLLM2_GGUF, SMOLLM2_TEACHER
FULL_RUN = "outputs/sst2-minilm-full"  # output_dir of recipes/sst2_minilm_full.yaml: the teacher and student measured
CPU_LOCK = "flock /tmp/hfc-cpu.lock"  # the benchmarks that time on a shared machine take this lock


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first paragraph of the script's docstring (``doc``)."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_args(parser: argparse.ArgumentParser, default: Optional[str] = SST2_DATA) -> None:
    """``--data`` (required when ``default`` is None) and ``--data-config``."""
    parser.add_argument("--data", default=default, required=default is None, help="Dataset: local directory or Hub id.")
    parser.add_argument("--data-config", default=None, help="Hub dataset config (e.g. sst2 for glue).")


def add_recipe_args(parser: argparse.ArgumentParser, default: str, help: str = "The hfcompress pipelines (a recipe file).") -> None:
    """``--recipe`` (default ``default``) and repeatable ``--override key=value``."""
    parser.add_argument("--recipe", default=default, help=help)
    parser.add_argument("--override", action="append", default=[], help="Recipe override key=value (repeatable), e.g. output_dir=DIR.")


def add_threads_arg(parser: argparse.ArgumentParser, help: str = "Intra-op threads of PyTorch and ONNX Runtime.") -> None:
    parser.add_argument("--threads", type=int, default=2, help=help)


def add_output_arg(parser: argparse.ArgumentParser, default: str, help: str = "Output path without extension.") -> None:
    parser.add_argument("--output", default=default, help=help)


def repo_relative(path: str | os.PathLike, root: str | os.PathLike = REPO) -> str:
    """``path`` as results record it: an absolute path in the repository ``root`` or beside it
    (``/x/shared/a`` for a checkout at ``/x/main``) becomes relative to ``root`` in POSIX form
    (``outputs/student``, ``../shared/a``).

    Relative paths (already relative to the repository, where the scripts run), Hub ids and absolute
    paths elsewhere (``/tmp/work``) are returned as given.
    """
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    target = Path(os.path.normpath(text))
    bases = list(dict.fromkeys((Path(os.path.abspath(root)), Path(root).resolve())))  # as given, and with links resolved
    for base in bases:
        if target.is_relative_to(base):
            return target.relative_to(base).as_posix()
    for base in bases:
        if base.parent != Path(base.anchor) and target.is_relative_to(base.parent):  # a checkout at /repo: nothing is beside it
            return Path(os.path.relpath(target, base)).as_posix()
    return text


def command_line(script: str | os.PathLike, argv: Optional[Sequence[str]] = None, prefix: str = "") -> str:
    """The shell command that reruns ``script`` with ``argv`` (default: this process's arguments), from the repository root.

    Absolute paths among the arguments, alone or after ``=`` (``--x=/p``, ``key=/p``), are made
    repository-relative (:func:`repo_relative`); ``prefix`` goes first (e.g. :data:`CPU_LOCK`).
    """
    args = [_relative_arg(a) for a in (sys.argv[1:] if argv is None else argv)]
    return " ".join([*([prefix] if prefix else []), "python", repo_relative(script), *map(shlex.quote, args)])


def _relative_arg(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if sep and os.path.isabs(value):
        return f"{key}={repo_relative(value)}"
    return repo_relative(arg)


_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def print_report(out: Path, report: dict) -> None:
    """Print a written report's Markdown (``out`` is the output path without extension) and where its chart is."""
    print((out.parent / f"{out.name}.md").read_text())
    if report.get("chart"):
        print(f"chart: {report['chart']}")


def goals_met(headline: str, values: dict[str, float], goals: dict[str, tuple[str, str, float]]) -> dict:
    """The goals of variant ``headline``: each ``goals[key] = (what, comparison, target)`` checked against ``values[key]``
    (comparison one of >=, <=, >, <)."""
    checked = {}
    for key, (what, op, target) in goals.items():
        value = values[key]
        checked[key] = {"what": what, "target": f"{op} {target}", "value": round(value, 4), "met": bool(_COMPARISONS[op](value, target))}
    return {"variant": headline, "goals": checked, "all_met": all(g["met"] for g in checked.values())}


def goals_markdown(result: dict) -> str:
    """A Markdown table of :func:`goals_met`'s result ('' when no goals were checked)."""
    if not result:
        return ""
    lines = [f"## Goals of `{result['variant']}`", "", "| goal | target | measured | met |", "|---|---|---|---|"]
    for g in result["goals"].values():
        lines.append(f"| {g['what']} | {g['target']} | {g['value']:.3f} | {'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"


def without_report_stages(data: dict) -> dict:
    """The recipe ``data`` without its evaluate and card stages: a benchmark script measures every variant itself."""
    return {**data, "stages": [stage for stage in data.get("stages", []) if stage.get("stage") not in ("evaluate", "card")]}

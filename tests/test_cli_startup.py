"""``import hfcompress`` and the command line's parser load neither torch nor transformers, so ``hfcompress --help`` starts fast."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hfcompress
from hfcompress.cli import build_parser, main
from hfcompress.utils import imports
from hfcompress.utils.imports import when_imported

REPO = Path(__file__).resolve().parents[1]

# the subcommands whose --help must stay light (factorize and trim-vocab take their help from
# hfcompress.lowrank / hfcompress.vocab, whose packages import torch)
LIGHT_HELP = [["--help"], ["run", "--help"], ["evaluate", "--help"], ["export", "--help"], ["card", "--help"], ["push", "--help"]]


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_and_help_load_neither_torch_nor_transformers():
    out = _python(f"""
import sys
heavy = lambda: [m for m in ("torch", "transformers") if m in sys.modules]
import hfcompress
assert not heavy(), ("import hfcompress", heavy())
assert "DistillationTrainer" in dir(hfcompress) and not heavy()
from hfcompress.cli import build_parser, main
build_parser()
for argv in {LIGHT_HELP!r}:
    try:
        main(argv)
    except SystemExit as done:
        assert done.code == 0, (argv, done.code)
    assert not heavy(), (argv, heavy())
print("light")
""")
    assert out.splitlines()[-1] == "light"


@pytest.mark.parametrize("order", ["hfcompress first", "transformers first", "a submodule that imports transformers first"])
def test_factorized_model_type_is_registered_whenever_transformers_is_imported(order):
    """The lazy package keeps the documented contract: after ``import hfcompress``, the Auto classes know factorised checkpoints,
    whichever module imports transformers first (hfcompress.targets did so half-initialised, and the registration failed)."""
    imports = {"hfcompress first": "import hfcompress; import transformers", "transformers first": "import transformers; import hfcompress",
               "a submodule that imports transformers first": "import hfcompress.targets"}[order]
    out = _python(f"""
import importlib.util, sys
{imports}
import transformers
assert importlib.util.find_spec("transformers") is not None
from transformers import AutoModelForSequenceClassification
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
registered = "hfcompress_factorized" in CONFIG_MAPPING  # before anything imports hfcompress.lowrank itself
from hfcompress.lowrank.modeling import FactorizedConfig
print(registered and CONFIG_MAPPING["hfcompress_factorized"] is FactorizedConfig)
""")
    assert out.splitlines()[-1] == "True"


def test_every_public_name_resolves():
    for name in hfcompress.__all__:
        module = importlib.import_module(f"hfcompress.{hfcompress._EXPORTS[name]}")
        assert getattr(hfcompress, name) is getattr(module, name), name
    assert set(hfcompress.__all__) <= set(dir(hfcompress))
    from hfcompress import DistillationTrainer, quantize_onnx  # noqa: F401

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        hfcompress.not_a_name  # noqa: B018


def test_evaluation_exports_load_only_the_module_asked_for():
    """``from hfcompress.evaluation import count_macs`` (as the filter pruner does at import) loads no datasets, evaluate or ONNX Runtime."""
    out = _python("""
import sys
unwanted = lambda: [m for m in ("datasets", "evaluate", "onnxruntime", "hfcompress.evaluation.harness") if m in sys.modules]
from hfcompress.evaluation import count_macs
import hfcompress.pruning.filters.pruner
assert not unwanted(), unwanted()
import hfcompress.evaluation as evaluation
assert "evaluate_model" in dir(evaluation) and not unwanted()
print(count_macs.__module__)
""")
    assert out.splitlines()[-1] == "hfcompress.evaluation.macs"
    from hfcompress import evaluation

    for name in evaluation.__all__:
        module = importlib.import_module(f"hfcompress.evaluation.{evaluation._EXPORTS[name]}")
        assert getattr(evaluation, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        evaluation.not_a_name  # noqa: B018


def test_when_imported_runs_after_the_import_not_on_find_spec(tmp_path, monkeypatch):
    (tmp_path / "hfc_probe_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []
    when_imported("hfc_probe_module", lambda: calls.append(sys.modules["hfc_probe_module"].VALUE))
    try:
        assert importlib.util.find_spec("hfc_probe_module") is not None and calls == []  # an availability check loads nothing
        import hfc_probe_module  # noqa: F401

        assert calls == [1]
        when_imported("hfc_probe_module", lambda: calls.append("now"))  # already imported: runs at once
        assert calls == [1, "now"]
    finally:
        sys.modules.pop("hfc_probe_module", None)
        sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, imports._AfterImport) and f.name == "hfc_probe_module")]


def test_evaluate_has_text_pair_column(capsys):
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--help"])
    assert done.value.code == 0 and "--text-pair-column" in capsys.readouterr().out
    args = build_parser().parse_args(["evaluate", "model", "--data", "d", "--text-pair-column", "hypothesis"])
    assert args.text_pair_column == "hypothesis"
    assert build_parser().parse_args(["evaluate", "model", "--data", "d"]).text_pair_column is None


def test_lazily_filled_subcommands_parse_as_before(capsys):
    args = build_parser().parse_args(["factorize", "m", "--output", "o", "--energy", "0.8"])
    assert (args.energy, args.min_rank, args.fn.__name__) == (0.8, 8, "_cmd_factorize")
    args = build_parser().parse_args(["push", "dir", "--repo-id", "me/model", "--dry-run"])
    assert (args.repo_id, args.dry_run, args.fn.__name__) == ("me/model", True, "_cmd_push")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["trim-vocab", "m", "--output", "o"])  # --data is required
    assert "--data" in capsys.readouterr().err

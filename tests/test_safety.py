"""Safety: no unsafe deserialisation in the code, safetensors weights, remote code off by default, tokens never written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from hfcompress.recipes import parse_recipe
from hfcompress.recipes.context import REDACTED, RECIPE_FILE, RunContext, redact_secrets
from hfcompress.recipes.runner import trusting_remote_code
from tests.run_helpers import REPO, cli, subprocess_env, write_recipe

SOURCES = sorted([*(REPO / "hfcompress").rglob("*.py"), *(REPO / "scripts").rglob("*.py")])
PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
FAKE_TOKEN = "hf_reliabilityTestTokenDoNotLeak0123456789"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_unsafe_deserialisation_or_remote_code_by_default(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not PICKLE_MODULES & {m.split(".")[0] for m in modules}, f"{path}:{node.lineno} imports a pickle module"
    for call, name in _calls(tree):
        where = f"{path}:{call.lineno}: {ast.unparse(call)[:120]}"
        if name == "torch.load":
            weights_only = _keyword(call, "weights_only")
            assert isinstance(weights_only, ast.Constant) and weights_only.value is True, f"{where} needs weights_only=True"
        assert name not in ("yaml.load", "yaml.full_load", "yaml.unsafe_load", "yaml.load_all"), f"{where}: use yaml.safe_load"
        if name.endswith(("np.load", "numpy.load")):
            allow = _keyword(call, "allow_pickle")
            assert allow is None or (isinstance(allow, ast.Constant) and allow.value is False), f"{where}: allow_pickle"
        remote = _keyword(call, "trust_remote_code")
        assert not (isinstance(remote, ast.Constant) and remote.value is True), f"{where}: trust_remote_code=True hard-coded"
    for node in ast.walk(tree):  # defaults of trust_remote_code parameters and config fields are False
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.args[len(node.args.args) - len(node.args.defaults):]
            pairs = list(zip(args, node.args.defaults)) + list(zip(node.args.kwonlyargs, node.args.kw_defaults))
            for arg, default in pairs:
                if arg.arg == "trust_remote_code":
                    assert isinstance(default, ast.Constant) and default.value is False, f"{path}:{node.lineno}"
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "trust_remote_code":
            value = node.value
            if isinstance(value, ast.Call):
                value = _keyword(value, "default")
            assert isinstance(value, ast.Constant) and value.value is False, f"{path}:{node.lineno}"


def test_trust_remote_code_is_off_until_turned_on(tiny_teacher_dir):
    recipe = parse_recipe({"name": "x", "output_dir": "o", "data": {"path": "d"},
                           "stages": [{"stage": "finetune_teacher", "model": str(tiny_teacher_dir)},
                                      {"stage": "distill", "teacher": "teacher", "student_layers": [0]},
                                      {"stage": "evaluate", "models": ["student"]}]})
    assert [getattr(c, "trust_remote_code", None) for _, c in recipe.stages] == [False, False, None]
    assert [getattr(c, "trust_remote_code", None) for _, c in trusting_remote_code(recipe).stages] == [True, True, None]


def test_secrets_are_redacted_in_saved_recipes(tmp_path):
    resolved = {"name": "x", "stages": [{"stage": "push", "token": FAKE_TOKEN, "repo_id": "me/model"}],
                "data": {"path": "d"}, "nested": [{"api_key": "k"}], "max_tokens": 5, "tokenizer": "bert-base-uncased"}
    assert redact_secrets(resolved)["stages"][0] == {"stage": "push", "token": REDACTED, "repo_id": "me/model"}
    assert redact_secrets(resolved)["max_tokens"] == 5 and redact_secrets(resolved)["tokenizer"] == "bert-base-uncased"
    ctx = RunContext(name="x", data_config=None, seed=0, root=tmp_path, resolved_recipe=resolved)
    ctx.write_recipe(tmp_path)
    text = (tmp_path / RECIPE_FILE).read_text()
    assert FAKE_TOKEN not in text and yaml.safe_load(text)["nested"] == [{"api_key": REDACTED}]


def test_hub_token_never_reaches_logs_or_outputs_and_weights_are_safetensors(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    out = tmp_path / "run"
    recipe = {
        "name": "token", "output_dir": str(out), "seed": 0, "description": "a run with a Hub token in the environment",
        "data": {"path": str(tiny_sst2_dir), "eval_split": "dev", "max_length": 32},
        "stages": [
            {"stage": "finetune_teacher", "model": str(tiny_teacher_dir),
             "training": {"max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 8, "use_cpu": True, "logging_steps": 1}},
            {"stage": "evaluate", "models": ["teacher"]},
        ],
    }
    env = subprocess_env(HF_TOKEN=FAKE_TOKEN, HUGGING_FACE_HUB_TOKEN=FAKE_TOKEN, TRANSFORMERS_VERBOSITY="info")
    proc = cli("run", str(write_recipe(recipe, tmp_path / "r.yaml")), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:  # checkpoints, pickled RNG/optimizer state and the published model included
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    published = [p for p in (out / "teacher").iterdir() if p.is_file()]
    assert (out / "teacher" / "model.safetensors").exists()
    assert not [p.name for p in published if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]  # no pickles to load

"""Hub push against a local server that answers the API calls huggingface_hub makes (the Hub is unreachable here)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
from pathlib import Path

import pytest
from huggingface_hub import constants

try:  # huggingface_hub >= 1.0 shares one HTTP client
    from huggingface_hub.utils import close_session as reset_http_session
except ImportError:  # 0.x: one requests session per thread
    from huggingface_hub.utils import reset_sessions as reset_http_session

from hfcompress.errors import ConfigError
from hfcompress.hub import CardConfig, write_model_card
from hfcompress.hub.push import PushConfig, PushError, plan_upload, push_to_hub

from tests.conftest import tiny_bert_config
from tests.fake_hub import FakeHub

FAKE_TOKEN = "hf_fakeTOKEN0123456789abcdefghijklmnopq"
READ_TOKEN = "hf_readONLYtoken0123456789abcdefghijklm"
PICKLES = ("training_args.bin", "optimizer.pt", "rng_state_0.pth", "onnx/calibration.pkl")  # Trainer leftovers: pickles
UPLOADED = {"README.md", "config.json", "model.safetensors", "eval_results.json", "onnx/model.onnx"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A model folder as training leaves it: weights, card, an ONNX file, and leftovers that must not be uploaded."""
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("push") / "tiny-student"
    BertForSequenceClassification(tiny_bert_config(100, num_hidden_layers=2)).save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"\x08\x07\x00onnx" * 64)
    (folder / ".hfcompress_stage_done").write_text("ok\n")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"\x00" * 16)
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("log")
    for name in PICKLES:
        (folder / name).write_bytes(b"\x80\x04pickle")
    write_model_card(folder, cfg=CardConfig(license="mit"))
    return folder


@pytest.fixture
def hub(monkeypatch):
    """The fake Hub, with huggingface_hub pointed at it and online for the duration of the test."""
    with FakeHub(valid_token=FAKE_TOKEN, read_only_token=READ_TOKEN) as server:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # huggingface_hub read HF_ENDPOINT at import
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # the plain LFS upload: the fake has no Xet storage
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # read at import too
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        reset_http_session()  # a session made while offline (0.x) or before NO_PROXY was set would not reach the fake
        yield server
    reset_http_session()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_push_creates_repo_and_uploads_one_commit(hub, model_folder, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    result = push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student", private=True, commit_message="Add tiny student"))

    assert hub.state.unexpected == []
    assert hub.state.repos["me/tiny-student"]["private"] is True
    [commit] = hub.state.commits
    assert commit["summary"] == "Add tiny student" and commit["revision"] == "main" and not commit["create_pr"]
    assert set(commit["files"]) | set(commit["lfs_files"]) == UPLOADED  # no checkpoint, stage marker or TensorBoard run
    for path in ("README.md", "config.json", "eval_results.json"):  # small text files travel inline, byte for byte
        assert commit["files"][path] == (model_folder / path).read_bytes()
    for path in ("model.safetensors", "onnx/model.onnx"):  # binary files go through LFS: batch, PUT, then the pointer
        lfs = commit["lfs_files"][path]
        assert lfs == {"oid": _sha(model_folder / path), "size": (model_folder / path).stat().st_size}
        assert hub.state.lfs_objects[lfs["oid"]] == (model_folder / path).read_bytes()
    assert result["commit_oid"] == commit["oid"] and result["commit_url"].endswith(commit["oid"]) and result["pr_url"] is None
    assert set(result["files"]) == UPLOADED

    # The token authenticates every call, and appears nowhere else.
    assert {r["authorization"] for r in hub.state.requests if r["method"] == "POST"} == {f"Bearer {FAKE_TOKEN}"}
    out = capsys.readouterr()
    seen = [out.out, out.err, caplog.text, json.dumps(result)]
    seen += [p.read_bytes().decode("utf-8", "replace") for p in model_folder.rglob("*") if p.is_file()]
    assert not any(FAKE_TOKEN in text for text in seen)


def test_pickles_are_never_uploaded(hub, model_folder):
    """training_args.bin (written by Trainer.save_model) and other pickles run code when loaded: never pushed."""
    assert all((model_folder / name).is_file() for name in PICKLES)
    assert not set(plan_upload(model_folder, PushConfig(repo_id="me/x")).files) & set(PICKLES)
    push_to_hub(model_folder, PushConfig(repo_id="me/pickles", allow_patterns=["*"]))
    commit = hub.state.commits[-1]
    assert set(commit["files"]) | set(commit["lfs_files"]) == UPLOADED


def test_push_to_new_branch_as_pull_request(hub, model_folder):
    push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student"))
    result = push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student", revision="int8", create_pr=True))
    assert hub.state.unexpected == []
    assert hub.state.repos["me/tiny-student"]["branches"] == {"main", "int8"}  # second create_repo hit 409 and went on
    assert hub.state.repos["me/tiny-student"]["private"] is False  # asked for public, on either client's wording
    last = hub.state.commits[-1]
    assert last["revision"] == "int8" and last["create_pr"] is True
    assert last["summary"] == "Upload tiny-student with hfcompress"
    assert result["pr_url"] == f"{hub.endpoint}/me/tiny-student/discussions/2"


def test_cli_push_and_dry_run(hub, model_folder, capsys, monkeypatch):
    from hfcompress.cli import main

    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token and sends nothing
    assert main(["push", str(model_folder), "--repo-id", "me/dry", "--dry-run", "--ignore-pattern", "onnx/*"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would upload 4 files") and "me/dry" in out
    assert "  config.json" in out and "model.safetensors" in out and "onnx/model.onnx" not in out and "checkpoint-5" not in out
    assert hub.state.requests == []

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert main(["push", str(model_folder), "--repo-id", "me/cli", "--private", "--allow-pattern", "*.json", "--allow-pattern", "README.md"]) == 0
    out = capsys.readouterr().out
    assert "pushed 3 files to me/cli" in out and FAKE_TOKEN not in out
    assert set(hub.state.commits[-1]["files"]) == {"README.md", "config.json", "eval_results.json"}


def test_rejected_token_is_a_one_line_error_without_the_token(hub, model_folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKENwrongTOKENwrongTOKEN00")
    with pytest.raises(PushError, match="HTTP 401.*token was rejected") as err:
        push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student"))
    assert "\n" not in str(err.value) and "hf_wrong" not in str(err.value)
    assert hub.state.commits == [] and hub.state.unexpected == []


def test_read_only_token_is_a_one_line_error_naming_the_fix(hub, model_folder, monkeypatch):
    push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student"))
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with pytest.raises(PushError, match="HTTP 403.*cannot write to this repo: use a write token") as err:
        push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student"))  # create_repo's 403 is taken as "exists"
    assert "\n" not in str(err.value) and READ_TOKEN not in str(err.value)
    assert len(hub.state.commits) == 1 and hub.state.unexpected == []


def test_unreachable_hub_is_a_one_line_error(hub, model_folder, monkeypatch):
    with socket.socket() as free:  # a port nothing listens on once this socket is closed
        free.bind(("127.0.0.1", 0))
        dead_endpoint = f"http://127.0.0.1:{free.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", dead_endpoint)
    with pytest.raises(PushError, match=re.escape(f"cannot reach {dead_endpoint} (ConnectionRefusedError: ") + ".*check the network connection") as err:
        push_to_hub(model_folder, PushConfig(repo_id="me/tiny-student"))
    assert "\n" not in str(err.value) and FAKE_TOKEN not in str(err.value)


def test_local_problems_are_caught_before_any_request(hub, model_folder, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        PushConfig(repo_id="me/two/slashes")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no README.md.*hfcompress card"):
        push_to_hub(bare, PushConfig(repo_id="me/bare"))
    with pytest.raises(ConfigError, match="holds no model"):
        push_to_hub(tmp_path, PushConfig(repo_id="me/empty", allow_no_card=True))
    with pytest.raises(ConfigError, match="no file .* matches"):
        plan_upload(model_folder, PushConfig(repo_id="me/x", allow_patterns=["*.gguf"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        push_to_hub(model_folder, PushConfig(repo_id="me/x"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("hfcompress.hub.push.get_token", lambda: None)  # ignore a saved login on this machine
    with pytest.raises(ConfigError, match="no Hugging Face token"):
        push_to_hub(model_folder, PushConfig(repo_id="me/x"))
    assert hub.state.requests == []


def test_recipe_card_and_push_stages(hub, model_folder, tmp_path):
    from huggingface_hub import ModelCard

    from hfcompress.recipes import parse_recipe, run_recipe

    recipe = {
        "name": "ship", "output_dir": str(tmp_path / "run"), "data": {"path": str(tmp_path)},
        "stages": [
            {"stage": "card", "model": str(model_folder), "license": "mit", "repo_id": "me/shipped", "tags": ["sentiment"]},
            {"stage": "push", "folder": "card", "repo_id": "me/shipped", "commit_message": "Ship it"},
        ],
    }
    outputs = run_recipe(parse_recipe(recipe))
    card = ModelCard.load(outputs["card"] / "README.md")
    assert card.data.license == "mit" and "sentiment" in card.data.tags and 'model="me/shipped"' in card.text
    commit = hub.state.commits[-1]
    assert commit["summary"] == "Ship it" and commit["files"]["README.md"] == (outputs["card"] / "README.md").read_bytes()
    assert set(commit["files"]) | set(commit["lfs_files"]) == UPLOADED | {"hfcompress_recipe.yaml"}
    record = (outputs["push"] / "push.json").read_text()
    assert json.loads(record)["commit_oid"] == commit["oid"] and FAKE_TOKEN not in record

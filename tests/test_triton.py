"""The Triton model repository: its layout, a config.pbtxt that parses as Triton's text format, and
inputs declared there that run the repository's model.onnx to the logits of the original export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from hfcompress.errors import ConfigError, ModelError
from hfcompress.serving.triton import TritonConfig, render_config, graph_tensors, write_triton_repository

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z0-9_.+-]+))')


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format as Triton reads config.pbtxt: ``name: value``, ``name { ... }``, ``name [ ... ]``;
    a repeated field becomes a list. Scalars stay strings (quotes removed), so tests compare what was written."""
    tokens = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        assert match and match.end() > position, f"unparseable text at {text[position:position + 30]!r}"
        position = match.end()
        if not match.group(1):
            tokens.append(match.group(2) or match.group(3) or match.group(4))
    tokens.append(None)
    index = 0

    def take(expected=None):
        nonlocal index
        token = tokens[index]
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r}"
        index += 1
        return token

    def value():
        if tokens[index] == "{":
            take("{")
            return message("}")
        if tokens[index] == "[":
            take("[")
            items = []
            while tokens[index] != "]":
                items.append(value())
                if tokens[index] == ",":
                    take(",")
            take("]")
            return items
        token = take()
        assert token not in (None, "}", "]", ",", ":"), f"a value expected, got {token!r}"
        return token[1:-1] if token.startswith('"') else token

    def message(end):
        fields: dict = {}
        while tokens[index] != end:
            name = take()
            assert name and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f"field name expected, got {name!r}"
            if tokens[index] == ":":
                take(":")
            item = value()
            if name in fields:
                fields[name] = (fields[name] if isinstance(fields[name], list) else [fields[name]]) + (item if isinstance(item, list) else [item])
            else:
                fields[name] = item
        take(end)
        return fields

    return message(None)


def test_the_parser_reads_the_text_format_and_rejects_broken_text():
    parsed = parse_pbtxt('name: "m"  # comment\nmax_batch_size: 8\ninput [ { name: "a" dims: [ -1, 2 ] } ]\n'
                         'instance_group [ { count: 2 kind: KIND_CPU } ]\ndynamic_batching { preferred_batch_size: [ 4, 8 ] }')
    assert parsed == {
        "name": "m", "max_batch_size": "8", "input": [{"name": "a", "dims": ["-1", "2"]}],
        "instance_group": [{"count": "2", "kind": "KIND_CPU"}], "dynamic_batching": {"preferred_batch_size": ["4", "8"]},
    }
    for broken in ('name: "m" }', "input [ { name: } ]", "dynamic_batching {"):
        with pytest.raises(AssertionError):
            parse_pbtxt(broken)


_NUMPY_TYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32}


@pytest.fixture
def exported(tiny_teacher_dir, tmp_path):
    from hfcompress.export import export_onnx

    return export_onnx(tiny_teacher_dir, tmp_path / "onnx", sequence_lengths=[8]).parent


def test_cli_export_writes_a_repository_whose_declared_inputs_give_the_exports_logits(tiny_teacher_dir, tmp_path, capsys):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from hfcompress.cli import main

    onnx_dir, repo = tmp_path / "onnx", tmp_path / "triton"
    args = ["export", str(tiny_teacher_dir), "--output", str(onnx_dir), "--sequence-lengths", "8", "--triton", str(repo),
            "--triton-model-name", "sst2-student", "--triton-instances", "2", "--triton-threads", "1", "--triton-max-queue-delay-us", "500"]
    assert main(args) == 0
    assert "Triton model repository" in capsys.readouterr().out
    model = repo / "sst2-student"
    assert sorted(p.name for p in model.iterdir()) == ["1", "README.md", "config.pbtxt", "labels.txt", "tokenizer"]
    assert (model / "1" / "model.onnx").read_bytes() == (onnx_dir / "model.onnx").read_bytes()
    assert (model / "labels.txt").read_text().split() == ["LABEL_0", "LABEL_1"]

    config = parse_pbtxt((model / "config.pbtxt").read_text())
    assert config["name"] == "sst2-student" and config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == "32"
    assert config["dynamic_batching"] == {"preferred_batch_size": ["8", "32"], "max_queue_delay_microseconds": "500"}
    assert config["instance_group"] == [{"count": "2", "kind": "KIND_CPU"}]
    assert config["parameters"] == {"key": "intra_op_thread_count", "value": {"string_value": "1"}}
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i["name"] for i in config["input"]] == [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["data_type"] == "TYPE_INT64" and i["dims"] == ["-1"] for i in config["input"])  # [batch, sequence]: batch axis left out
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": ["2"], "label_filename": "labels.txt"}]

    # a client as the README says: tokenize with tokenizer/, feed the declared inputs with their declared types and shapes
    tokenizer = AutoTokenizer.from_pretrained(model / "tokenizer")
    texts = ["a gorgeous , witty film .", "the worst movie of the year", "fine"]
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    feeds = {}
    for declared in config["input"]:
        array = encoded[declared["name"]].astype(_NUMPY_TYPES[declared["data_type"]])
        assert array.shape[1:] == tuple(n if d == "-1" else int(d) for d, n in zip(declared["dims"], array.shape[1:]))
        feeds[declared["name"]] = array
    (logits,) = session.run([config["output"][0]["name"]], feeds)
    original = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(logits, original.run(["logits"], {k: v.astype(np.int64) for k, v in feeds.items()})[0])
    assert logits.shape == (3, 2)

    readme = (model / "README.md").read_text()
    assert 'AutoTokenizer.from_pretrained("sst2-student/tokenizer")' in readme and '"input_ids"' in readme and "ensemble" in readme


def test_a_second_model_joins_the_repository_and_a_name_taken_needs_overwrite(exported, tmp_path):
    repo = tmp_path / "triton"
    first = write_triton_repository(exported, repo, TritonConfig(model_name="a"))
    write_triton_repository(exported, repo, TritonConfig(model_name="b", max_batch_size=16))
    assert sorted(p.name for p in repo.iterdir()) == ["a", "b"]
    assert parse_pbtxt((repo / "b" / "config.pbtxt").read_text())["dynamic_batching"]["preferred_batch_size"] == ["8"]  # 32 > 16 dropped
    with pytest.raises(ConfigError, match="already exists"):
        write_triton_repository(exported, repo, TritonConfig(model_name="a"))
    assert write_triton_repository(exported, repo, TritonConfig(model_name="a", instances=3), overwrite=True) == first
    assert parse_pbtxt((first / "config.pbtxt").read_text())["instance_group"] == [{"count": "3", "kind": "KIND_CPU"}]
    assert write_triton_repository(exported, repo).name == "onnx"  # default name: the ONNX directory's


def test_without_batching_dims_keep_the_batch_axis_and_no_batcher_is_declared(exported):
    inputs, outputs, batched = graph_tensors(exported / "model.onnx")
    assert batched and inputs[0].dims == [-1, -1] and outputs[0].dims == [-1, 2]
    config = parse_pbtxt(render_config("m", inputs, outputs, batched, TritonConfig(max_batch_size=0)))
    assert config["max_batch_size"] == "0" and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == ["-1", "-1"] and config["output"][0]["dims"] == ["-1", "2"]


def _graph_dir(directory: Path, batch, **save_options) -> Path:
    """A directory with a one-MatMul graph (its weight an initializer) of batch axis ``batch``, a config and a tokenizer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from conftest import save_tiny_wordpiece_tokenizer, tiny_bert_config

    weight = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2])], initializer=[weight],
    )
    directory.mkdir()
    onnx.save(helper.make_model(graph), str(directory / "model.onnx"), **save_options)
    save_tiny_wordpiece_tokenizer(directory, 128)
    tiny_bert_config(128).save_pretrained(directory)
    return directory


def test_a_graph_with_a_fixed_batch_axis_needs_max_batch_size_0(tmp_path):
    fixed = _graph_dir(tmp_path / "fixed", 1)
    with pytest.raises(ModelError, match="max_batch_size 0"):
        write_triton_repository(fixed, tmp_path / "repo")
    model = write_triton_repository(fixed, tmp_path / "repo", TritonConfig(max_batch_size=0))
    config = parse_pbtxt((model / "config.pbtxt").read_text())
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["1", "4"]}] and "dynamic_batching" not in config


def test_weights_stored_outside_the_graph_file_are_copied_beside_it(tmp_path):
    import onnxruntime as ort

    external = _graph_dir(tmp_path / "external", "batch", save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    model = write_triton_repository(external, tmp_path / "repo")
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert parse_pbtxt((model / "config.pbtxt").read_text())["output"][0]["label_filename"] == "labels.txt"  # [batch, 2]: the config's 2 labels
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": np.eye(4, dtype=np.float32)})[0], np.arange(8, dtype=np.float32).reshape(4, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"model_name": "a/b"}, "model name"), ({"instances": 0}, "instances"), ({"max_batch_size": -1}, "max_batch_size"),
    ({"preferred_batch_sizes": [0]}, "preferred"), ({"threads": 0}, "threads"),
])
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TritonConfig(**kwargs)


def test_cli_rejects_bad_triton_options_before_exporting(tiny_teacher_dir, tmp_path, capsys):
    from hfcompress.cli import main

    args = ["export", str(tiny_teacher_dir), "--output", str(tmp_path / "onnx"), "--triton", str(tmp_path / "repo"), "--triton-instances", "0"]
    assert main(args) == 2
    assert "instances (0)" in capsys.readouterr().err and not (tmp_path / "onnx").exists()


def test_not_an_onnx_directory_is_a_model_error(tiny_teacher_dir, tmp_path):
    with pytest.raises(ModelError, match="no .onnx file|not a directory"):
        write_triton_repository(Path(tmp_path / "missing"), tmp_path / "repo")


def _export_recipe(teacher: Path, data: Path, out: Path, triton) -> dict:
    """A tiny model exported with a Triton repository, then carded and pushed (dry run) as a release would be."""
    return {
        "name": "triton-recipe", "output_dir": str(out), "data": {"path": str(data), "eval_split": "dev", "max_length": 16},
        "stages": [
            {"stage": "export", "model": str(teacher), "sequence_lengths": [8], "triton": triton},
            {"stage": "card", "model": str(teacher), "onnx": ["onnx"]},
            {"stage": "push", "folder": "card", "repo_id": "me/tiny", "dry_run": True},
        ],
    }


def test_a_recipe_export_stage_writes_the_repository_that_card_and_push_leave_out(tiny_teacher_dir, tiny_sst2_dir, tmp_path, monkeypatch):
    import onnxruntime as ort
    import yaml

    from hfcompress.artifacts import PUSH_RESULT_FILE, STAGE_DONE_FILE, TRITON_REPOSITORY_DIR
    from hfcompress.cli import main
    from hfcompress.hub.push import PushConfig, push_to_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token
    out = tmp_path / "run"
    recipe = _export_recipe(tiny_teacher_dir, tiny_sst2_dir, out, {"instances": 2, "max_batch_size": 16, "max_queue_delay_us": 500})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 0

    onnx_dir = out / "onnx"
    model = onnx_dir / TRITON_REPOSITORY_DIR / "onnx"  # named after the stage, as the CLI names it after the ONNX directory
    assert (onnx_dir / STAGE_DONE_FILE).is_file() and sorted(p.name for p in (onnx_dir / TRITON_REPOSITORY_DIR).iterdir()) == ["onnx"]
    assert (model / "1" / "model.onnx").read_bytes() == (onnx_dir / "model.onnx").read_bytes()
    config = parse_pbtxt((model / "config.pbtxt").read_text())
    assert config["name"] == "onnx" and config["max_batch_size"] == "16" and config["instance_group"] == [{"count": "2", "kind": "KIND_CPU"}]
    assert config["dynamic_batching"] == {"preferred_batch_size": ["8"], "max_queue_delay_microseconds": "500"}
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i["name"] for i in config["input"]] == [i.name for i in session.get_inputs()]

    release = sorted(p.relative_to(out / "card").as_posix() for p in (out / "card").rglob("*") if p.is_file())
    assert "onnx/model.onnx" in release and not any(TRITON_REPOSITORY_DIR in path for path in release)
    pushed = json.loads((out / "push" / PUSH_RESULT_FILE).read_text())["files"]
    assert "onnx/model.onnx" in pushed and not any(TRITON_REPOSITORY_DIR in path for path in pushed)
    pushed = push_to_hub(onnx_dir, PushConfig(repo_id="me/onnx", allow_no_card=True), dry_run=True)["files"]  # the export itself
    assert "model.onnx" in pushed and not any(TRITON_REPOSITORY_DIR in path for path in pushed)


@pytest.mark.parametrize("triton, message", [
    ({"instances": 0}, "instances"), ({"max_batch_sise": 8}, "max_batch_sise"), ("yes", "matches none of"),
])
def test_a_recipe_with_bad_triton_settings_fails_before_any_stage(tiny_teacher_dir, tiny_sst2_dir, tmp_path, triton, message):
    from hfcompress.recipes.recipe import parse_recipe

    with pytest.raises(ConfigError, match=message):
        parse_recipe(_export_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run", triton))


def test_a_stage_name_that_cannot_name_a_triton_model_needs_model_name(tiny_teacher_dir, tiny_sst2_dir, tmp_path):
    from hfcompress.recipes.recipe import parse_recipe

    recipe = _export_recipe(tiny_teacher_dir, tiny_sst2_dir, tmp_path / "run", True)
    recipe["stages"][0]["name"], recipe["stages"][1]["onnx"] = "onnx export", ["onnx export"]
    with pytest.raises(ConfigError, match="Triton model name 'onnx export'"):
        parse_recipe(recipe)
    recipe["stages"][0]["triton"] = {"model_name": "sst2"}
    assert parse_recipe(recipe).stages[0][1].triton_config().model_name == "sst2"

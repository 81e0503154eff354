"""Bad input through every subcommand: one ``hfcompress: error:`` line naming the problem and the fix, exit 2,
no traceback, and nothing written; the well-formed neighbours of those inputs succeed.

The cases go through the CLI's ``main`` (argument parsing, validation and the one-line error handler
of the installed ``hfcompress`` command) in this process, so that 160 of them share the tiny model built
once per module and take about a minute on 2 cores. ``serve`` cases fail if they reach ``uvicorn.run``
(the port would be bound), and one runs the real command and checks that its port stays free.
Classes of defect, across run, evaluate, export, factorize, trim-vocab, card, push, search, serve and
convert-gguf: missing, empty or corrupt model directories (a truncated safetensors, a config.json that
is not JSON, a model.onnx that is not ONNX), missing or unreadable data, numbers out of range, files
where a directory belongs and the other way round, outputs that exist, and disks that are too full.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from hfcompress.artifacts import FACTORIZATION_FILE, PARITY_FILE
from hfcompress.cli import main
from tests.run_helpers import cli, distill_recipe, tree_snapshot, write_recipe
from tests.test_bad_input import one_error_line


@dataclass
class Workspace:
    """What the cases start from, built once: a tiny classifier with its tokenizer, and a tiny SST-2."""

    model: Path
    data: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer, sst2_path) -> Workspace:
    import torch
    from transformers import BertForSequenceClassification

    from tests.conftest import tiny_bert_config

    root = tmp_path_factory.mktemp("workspace")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data").mkdir()
    for name, rows in (("train.tsv", 64), ("dev.tsv", 32)):
        (root / "data" / name).write_text("\n".join((sst2_path / name).read_text().splitlines()[: rows + 1]) + "\n")
    return Workspace(root / "model", root / "data")


class Case:
    """``tmp`` holds copies of the workspace's model and data (``tmp/model``, ``tmp/data``) that ``setup`` may damage."""

    def __init__(self, tmp: Path, ws: Workspace):
        self.tmp, self.ws = tmp, ws
        self.model = tmp / "model"
        self.data = tmp / "data"
        self.out = tmp / "out"
        shutil.copytree(ws.model, self.model)
        shutil.copytree(ws.data, self.data)


# --- damage --------------------------------------------------------------------------------------------------
def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def empty_dir(c: Case) -> Path:
    (c.tmp / "empty").mkdir()
    return c.tmp / "empty"


def config_not_json(c: Case) -> Path:
    (c.model / "config.json").write_text("{'architectures': [BertForSequenceClassification")
    return c.model


def truncated_weights(c: Case) -> Path:
    truncate(c.model / "model.safetensors")
    return c.model


def without_tokenizer(c: Case) -> Path:
    for p in c.model.iterdir():
        if "token" in p.name or p.name.startswith("vocab"):
            p.unlink()
    return c.model


def corrupt_onnx(c: Case) -> Path:
    (c.model / "model.onnx").write_bytes(b"\x08\x07\x12\x0bnot a graph" * 10)
    return c.model


def weights_file(c: Case) -> Path:
    return c.model / "model.safetensors"  # a file where a model directory belongs


def missing(c: Case) -> Path:
    return c.tmp / "no-such-thing"


def non_utf8_data(c: Case) -> Path:
    with open(c.data / "train.tsv", "ab") as f:
        f.write(b"caf\xe9 au lait\t1\n")
    return c.data


def existing_output(c: Case) -> Path:
    c.out.mkdir()
    (c.out / "keep.txt").write_text("precious")
    return c.out


def output_is_a_file(c: Case) -> Path:
    c.out.write_text("a file")
    return c.out


MODEL_DEFECTS = [  # (damage, expected part of the message), for every command that reads a model directory
    pytest.param(missing, "does not exist", id="missing-model"),
    pytest.param(empty_dir, "config.json", id="empty-model-dir"),  # "has no config.json" (card: "neither config.json nor an .onnx file")
    pytest.param(config_not_json, "config.json is not valid JSON", id="config-not-json"),
    pytest.param(truncated_weights, "model.safetensors is truncated or corrupt", id="truncated-safetensors"),
    pytest.param(weights_file, "is a file, not a directory", id="file-as-model-dir"),
]

# command -> argv for the model MODEL (output under OUT, data DATA); each reads a model directory
MODEL_COMMANDS = {
    "evaluate": lambda c, model: ["evaluate", str(model), "--data", str(c.data), "--split", "dev"],
    "export": lambda c, model: ["export", str(model), "--output", str(c.out)],
    "factorize": lambda c, model: ["factorize", str(model), "--output", str(c.out), "--energy", "0.9"],
    "trim-vocab": lambda c, model: ["trim-vocab", str(model), "--output", str(c.out), "--data", str(c.data)],
    "card": lambda c, model: ["card", str(model), "--output", str(c.out)],
    "serve-preflight": None,  # see test_serve_refuses_a_broken_model_before_binding
}


def _expect_one_error(argv: list[str], capsys, message: str, out: Optional[Path]) -> str:
    before = tree_snapshot(out) if out is not None else None
    assert main(argv) == 2, capsys.readouterr().err[-2000:]
    line = one_error_line(capsys.readouterr().err)
    assert message in line, line
    if out is not None:
        assert tree_snapshot(out) == before, "something was written"
    return line


@pytest.mark.parametrize("command", [c for c, argv in MODEL_COMMANDS.items() if argv])
@pytest.mark.parametrize("damage,message", MODEL_DEFECTS)
def test_broken_model_directories_through_every_command(workspace, tmp_path, capsys, command, damage, message):
    c = Case(tmp_path, workspace)
    model = damage(c)
    _expect_one_error(MODEL_COMMANDS[command](c, model), capsys, message, c.out)


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``hfcompress ARGV``; argparse's own usage errors exit through SystemExit."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    return status, capsys.readouterr().err


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _sentences(c: Case, content: str | bytes) -> str:
    return str(_write(c.tmp / "sentences.txt", content))


def _gguf(c: Case, content: bytes) -> str:
    return str(_write(c.tmp / "model.gguf", content))


def _space(c: Case, text: str) -> str:
    return str(_write(c.tmp / "space.yaml", text))


def _recipe(c: Case, edit=None) -> str:
    recipe = distill_recipe(c.model, c.data, c.out)
    if edit:
        edit(recipe)
    return str(write_recipe(recipe, c.tmp / "recipe.yaml"))


def _ev(c: Case, *extra: str) -> list[str]:
    return ["evaluate", str(c.model), "--data", str(c.data), "--split", "dev", *extra]


def _ex(c: Case, *extra: str) -> list[str]:
    return ["export", str(c.model), "--output", str(c.out), *extra]


def _fz(c: Case, *extra: str) -> list[str]:
    return ["factorize", str(c.model), "--output", str(c.out), *(extra or ("--energy", "0.9")) ]


def _tv(c: Case, *extra: str) -> list[str]:
    return ["trim-vocab", str(c.model), "--output", str(c.out), "--data", str(c.data), *extra]


def _search(c: Case, *extra: str) -> list[str]:
    """A search with a valid space, which an ``--space`` in ``extra`` replaces (the last one given counts)."""
    valid = _write(c.tmp / "valid-space.yaml", "params:\n  stages.student.training.temperature: {type: float, low: 1, high: 8}\n")
    return ["search", _recipe(c), "--output", str(c.out), "--space", str(valid), *extra]


# (argv(case), expected part of the error line) -- every one is refused before anything is written under c.out
BAD_ARGUMENT_CASES = [
    # evaluate: numbers out of range, missing or unreadable data, files where directories belong
    pytest.param(lambda c: _ev(c, "--batch-size", "0"), "--batch-size: must be at least 1, got 0", id="evaluate-batch-size-0"),
    pytest.param(lambda c: _ev(c, "--batch-size", "-4"), "--batch-size: must be at least 1, got -4", id="evaluate-batch-size-negative"),
    pytest.param(lambda c: _ev(c, "--batch-size", "many"), "--batch-size: must be an integer, got 'many'", id="evaluate-batch-size-not-a-number"),
    pytest.param(lambda c: _ev(c, "--max-length", "0"), "--max-length: must be at least 1, got 0", id="evaluate-max-length-0"),
    pytest.param(lambda c: _ev(c, "--max-length", "100000"), "--max-length 100000 is longer than model", id="evaluate-max-length-beyond-positions"),
    pytest.param(lambda c: _ev(c, "--max-samples", "0"), "--max-samples: must be at least 1, got 0", id="evaluate-max-samples-0"),
    pytest.param(lambda c: _ev(c, "--latency", "--threads", "0"), "--threads: must be at least 1, got 0", id="evaluate-threads-0"),
    pytest.param(lambda c: _ev(c, "--latency", "--latency-batch-sizes", "0"), "--latency-batch-sizes: must be at least 1, got 0", id="evaluate-latency-batch-0"),
    pytest.param(lambda c: _ev(c, "--latency", "--latency-samples", "-1"), "--latency-samples: must be at least 1, got -1", id="evaluate-latency-samples-negative"),
    pytest.param(lambda c: _ev(c, "--latency", "--repeats", "0"), "--repeats: must be at least 1, got 0", id="evaluate-repeats-0"),
    pytest.param(lambda c: _ev(c, "--latency", "--warmup", "-1"), "--warmup: must be at least 0, got -1", id="evaluate-warmup-negative"),
    pytest.param(lambda c: _ev(c, "--split", "test"), "split 'test'", id="evaluate-missing-split"),
    pytest.param(lambda c: _ev(c, "--text-column", "text"), "has no column 'text'", id="evaluate-missing-column"),
    pytest.param(lambda c: ["evaluate", str(c.model), "--data", str(c.tmp / "nope"), "--split", "dev"], "could not be loaded", id="evaluate-missing-data"),
    pytest.param(lambda c: ["evaluate", str(c.model), "--data", str(empty_dir(c)), "--split", "dev"], "could not be loaded", id="evaluate-empty-data-dir"),
    pytest.param(lambda c: ["evaluate", str(c.model), "--data", str(non_utf8_data(c)), "--split", "train"], "train.tsv line 66 is not UTF-8",
                 id="evaluate-non-utf8-data"),
    pytest.param(lambda c: _ev(c, "--backend", "onnx"), "no .onnx file in", id="evaluate-onnx-backend-without-onnx"),
    pytest.param(lambda c: _ev(c, "--onnx-file", "nope.onnx"), "ONNX file 'nope.onnx' is not in", id="evaluate-missing-onnx-file"),
    pytest.param(lambda c: ["evaluate", str(corrupt_onnx(c)), "--data", str(c.data), "--split", "dev"], "does not load as ONNX", id="evaluate-corrupt-onnx"),
    pytest.param(lambda c: _ev(c, "--output", str(empty_dir(c))), "is a directory: give the path of a JSON file", id="evaluate-output-is-a-directory"),
    # export
    pytest.param(lambda c: (existing_output(c), _ex(c))[1], "already exists: pass --overwrite", id="export-existing-output"),
    pytest.param(lambda c: (output_is_a_file(c), _ex(c, "--overwrite"))[1], "is a file: give a directory path", id="export-output-is-a-file"),
    pytest.param(lambda c: _ex(c, "--opset", "0"), "opset 0 is not an ONNX opset", id="export-opset-0"),
    pytest.param(lambda c: _ex(c, "--opset", "99"), "opset 99 is not an ONNX opset", id="export-opset-99"),
    pytest.param(lambda c: _ex(c, "--atol", "-1"), "atol must be positive, got -1.0", id="export-atol-negative"),
    pytest.param(lambda c: _ex(c, "--atol", "nan"), "atol must be positive, got nan", id="export-atol-nan"),
    pytest.param(lambda c: _ex(c, "--batch-sizes", "0"), "parity batch sizes and sequence lengths must be positive lists, got [0]", id="export-batch-size-0"),
    pytest.param(lambda c: _ex(c, "--sequence-lengths", "-8"), "must be positive lists, got [1, 4] and [-8]", id="export-sequence-length-negative"),
    pytest.param(lambda c: _ex(c, "--parity-texts", str(c.tmp / "nope.txt")), "cannot be read (No such file or directory)", id="export-missing-parity-texts"),
    pytest.param(lambda c: _ex(c, "--parity-texts", _sentences(c, "\n\n")), "has no sentences", id="export-empty-parity-texts"),
    pytest.param(lambda c: _ex(c, "--parity-texts", _sentences(c, b"caf\xe9\n")), "sentences.txt line 1 is not UTF-8 (byte 0xe9 at column 4)", id="export-non-utf8-parity-texts"),
    pytest.param(lambda c: _ex(c, "--parity-texts", str(empty_dir(c))), "cannot be read (Is a directory)", id="export-parity-texts-is-a-directory"),
    pytest.param(lambda c: _ex(c, "--triton", str(c.tmp / "triton"), "--triton-max-batch-size", "-1"), "max_batch_size (-1) and max_queue_delay_us (2000) must be >= 0", id="export-triton-batch-negative"),
    pytest.param(lambda c: _ex(c, "--triton", str(c.tmp / "triton"), "--triton-instances", "0"), "instances (0) and threads (None) must be at least 1", id="export-triton-instances-0"),
    pytest.param(lambda c: ["export", str(without_tokenizer(c)), "--output", str(c.out)], "has no tokenizer files", id="export-without-tokenizer"),
    # factorize
    pytest.param(lambda c: (existing_output(c), _fz(c))[1], "already exists: pass --overwrite", id="factorize-existing-output"),
    pytest.param(lambda c: (output_is_a_file(c), _fz(c, "--energy", "0.9", "--overwrite"))[1], "is a file: give a directory path", id="factorize-output-is-a-file"),
    pytest.param(lambda c: _fz(c, "--energy", "0"), "energy=0.0 is outside (0, 1]", id="factorize-energy-0"),
    pytest.param(lambda c: _fz(c, "--energy", "1.5"), "energy=1.5 is outside (0, 1]", id="factorize-energy-above-1"),
    pytest.param(lambda c: _fz(c, "--compression", "0"), "compression=0.0 is outside (0, 1)", id="factorize-compression-0"),
    pytest.param(lambda c: _fz(c, "--compression", "3"), "compression=3.0 is outside (0, 1)", id="factorize-compression-above-1"),
    pytest.param(lambda c: _fz(c, "--energy", "0.9", "--min-rank", "0"), "min_rank=0 must be at least 1", id="factorize-min-rank-0"),
    pytest.param(lambda c: _fz(c, "--energy", "0.9", "--rank-multiple", "-8"), "rank_multiple=-8 must be at least 1", id="factorize-rank-multiple-negative"),
    pytest.param(lambda c: _fz(c, "--energy", "0.9", "--target-regex", "(["), "target_modules '([' is not a valid regular expression", id="factorize-bad-regex"),
    pytest.param(lambda c: _fz(c, "--energy", "0.9", "--target-modules", "no_such_layer"), "match no Linear/Conv1D layer", id="factorize-target-matches-nothing"),
    # trim-vocab
    pytest.param(lambda c: (existing_output(c), _tv(c))[1], "already exists: pass --overwrite", id="trim-vocab-existing-output"),
    pytest.param(lambda c: _tv(c, "--min-frequency", "0"), "min_frequency=0 must be at least 1", id="trim-vocab-min-frequency-0"),
    pytest.param(lambda c: _tv(c, "--split", "test"), "split 'test'", id="trim-vocab-missing-split"),
    pytest.param(lambda c: _tv(c, "--text-column", "text"), "has no column 'text'", id="trim-vocab-missing-column"),
    pytest.param(lambda c: ["trim-vocab", str(c.model), "--output", str(c.out), "--data", str(c.tmp / "nope")], "could not be loaded", id="trim-vocab-missing-data"),
    pytest.param(lambda c: ["trim-vocab", str(c.model), "--output", str(c.out), "--data", str(non_utf8_data(c))], "is not UTF-8", id="trim-vocab-non-utf8-data"),
    pytest.param(lambda c: ["trim-vocab", str(c.model), "--output", str(c.out), "--data", str(empty_dir(c))], "could not be loaded", id="trim-vocab-empty-data-dir"),
    # card
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--onnx", str(corrupt_onnx(c))], "does not load as ONNX (it holds no graph)", id="card-corrupt-onnx"),
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--onnx", str(c.tmp / "nope")], "has no .onnx file: give the output directory of an export", id="card-missing-onnx-dir"),
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--repo-id", "a/b/c"], "repo_id 'a/b/c' is not a Hub repo id", id="card-bad-repo-id"),
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--report", str(c.tmp / "nope")], "does not exist: give compression_report.json or its directory", id="card-missing-report"),
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--template", str(c.tmp / "nope.md")], "does not exist: give a Jinja template path", id="card-missing-template"),
    pytest.param(lambda c: ["card", str(c.model), "--output", str(c.out), "--template", _sentences(c, b"{{ caf\xe9 }")], "is not UTF-8", id="card-non-utf8-template"),
    pytest.param(lambda c: (_write(c.model / "README.md", "# my own card\n"), ["card", str(c.model)])[1], "was not written by hfcompress", id="card-foreign-readme"),
    # push (offline: --dry-run contacts nothing)
    pytest.param(lambda c: ["push", str(c.tmp / "nope"), "--repo-id", "me/model", "--dry-run"], "does not exist: give the directory of a saved model", id="push-missing-dir"),
    pytest.param(lambda c: ["push", str(empty_dir(c)), "--repo-id", "me/model", "--dry-run"], "holds no model (no config.json, no .onnx file)", id="push-empty-dir"),
    pytest.param(lambda c: ["push", str(weights_file(c)), "--repo-id", "me/model", "--dry-run"], "is a file, not a folder", id="push-file-as-dir"),
    pytest.param(lambda c: ["push", str(c.model), "--repo-id", "not a repo id", "--dry-run"], "repo_id 'not a repo id' is not a Hub repo id", id="push-bad-repo-id"),
    pytest.param(lambda c: ["push", str(c.model), "--repo-id", "me/model", "--allow-pattern", "*.nothing", "--dry-run"], "has no README.md: run `hfcompress card", id="push-pattern-matches-nothing"),
    pytest.param(lambda c: ["push", str(c.model), "--repo-id", "me/model"], "has no README.md", id="push-offline"),
    # search
    pytest.param(lambda c: _search(c, "--trials", "0"), "--trials: must be at least 1, got 0", id="search-trials-0"),
    pytest.param(lambda c: _search(c, "--trials", "-3"), "--trials: must be at least 1, got -3", id="search-trials-negative"),
    pytest.param(lambda c: _search(c, "--budget", "fast"), "--budget item 'fast' is not key=value", id="search-budget-does-not-parse"),
    pytest.param(lambda c: _search(c, "--budget", "latency_ms=abc"), "--budget latency_ms='abc' is not a number", id="search-budget-not-a-number"),
    pytest.param(lambda c: _search(c, "--budget", "latency_ms=-5"), "--budget latency_ms=-5 must be positive", id="search-budget-negative"),
    pytest.param(lambda c: _search(c, "--budget", "speed=5"), "--budget: unknown key 'speed'", id="search-budget-unknown-key"),
    pytest.param(lambda c: _search(c, "--tolerance", "-1"), "--tolerance: must be at least 0, got -1", id="search-tolerance-negative"),
    pytest.param(lambda c: _search(c, "--threads", "0"), "--threads: must be at least 1, got 0", id="search-threads-0"),
    pytest.param(lambda c: _search(c, "--latency-samples", "0"), "--latency-samples: must be at least 1, got 0", id="search-latency-samples-0"),
    pytest.param(lambda c: _search(c, "--space", str(c.tmp / "nope.yaml")), "does not exist", id="search-missing-space"),
    pytest.param(lambda c: _search(c, "--space", _space(c, "params: [\n")), "is not valid YAML at line 2", id="search-space-not-yaml"),
    pytest.param(lambda c: _search(c, "--space", _space(c, "params: {}\n")), "search.params: list at least one recipe path", id="search-space-empty"),
    pytest.param(lambda c: _search(c, "--space", _space(c, "params:\n  stages.student.training.temperature: {type: float, low: 5, high: 1}\n")), "a float parameter takes 'low' < 'high'", id="search-space-low-above-high"),
    pytest.param(lambda c: _search(c, "--storage", "nosuchdb://x"), "--storage", id="search-bad-storage-url"),
    pytest.param(lambda c: ["search", str(c.tmp / "nope.yaml"), "--output", str(c.out)], "does not exist", id="search-missing-recipe"),
    pytest.param(lambda c: ["search", _sentences(c, b"name: caf\xe9\n"), "--output", str(c.out)], "sentences.txt line 1 is not UTF-8 (byte 0xe9 at column 10)", id="search-non-utf8-recipe"),
    pytest.param(lambda c: (output_is_a_file(c), _search(c))[1], "is a file", id="search-output-is-a-file"),
    # convert-gguf
    pytest.param(lambda c: ["convert-gguf", str(c.tmp / "nope.gguf"), str(c.out)], "does not exist", id="convert-gguf-missing-file"),
    pytest.param(lambda c: ["convert-gguf", _gguf(c, b""), str(c.out)], "is not a readable GGUF file (cannot mmap an empty file)", id="convert-gguf-empty-file"),
    pytest.param(lambda c: ["convert-gguf", _gguf(c, b"GGUF\x03\x00\x00\x00garbage"), str(c.out)], "is not a readable GGUF file", id="convert-gguf-truncated-file"),
    pytest.param(lambda c: ["convert-gguf", str(weights_file(c)), str(c.out)], "is not a readable GGUF file (GGUF magic invalid)", id="convert-gguf-not-gguf"),
    pytest.param(lambda c: ["convert-gguf", str(c.model), str(c.out)], "is a directory: give the .gguf file itself", id="convert-gguf-directory"),
    pytest.param(lambda c: (existing_output(c), ["convert-gguf", _gguf(c, b"GGUF"), str(c.out)])[1], "already exists", id="convert-gguf-existing-output"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGUMENT_CASES)
def test_bad_arguments_of_every_command(workspace, tmp_path, capsys, argv, message):
    c = Case(tmp_path, workspace)
    args = argv(c)
    before = tree_snapshot(c.out)
    status, err = _run_cli(args, capsys)
    assert status == 2, err[-2000:]
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(("hfcompress: error: ", f"hfcompress {args[0]}: error: ")), err[-2000:]
    assert message in line, line
    assert tree_snapshot(c.out) == before, "something was written"


# --- serve: a bad model or setting fails before the port is bound ------------------------------------------
SERVE_CASES = [
    *[pytest.param(damage, [], message, id=f"serve-{param_id}") for damage, message, param_id in (
        (missing, "does not exist", "missing-model"),
        (empty_dir, "has no config.json", "empty-model-dir"),
        (config_not_json, "config.json is not valid JSON", "config-not-json"),
        (truncated_weights, "model.safetensors is truncated or corrupt", "truncated-safetensors"),
        (corrupt_onnx, "does not load as ONNX (it holds no graph)", "corrupt-onnx"),
        (weights_file, "is a file, not a directory", "file-as-model-dir"),
        (without_tokenizer, "has no tokenizer files", "model-without-tokenizer"),
    )],
    pytest.param(None, ["--port", "-1"], "port must be between 0 and 65535, got -1", id="serve-port-negative"),
    pytest.param(None, ["--port", "70000"], "port must be between 0 and 65535, got 70000", id="serve-port-too-large"),
    pytest.param(None, ["--port", "http"], "argument --port: invalid int value", id="serve-port-not-a-number"),
    pytest.param(None, ["--workers", "0"], "workers must be a positive integer, got 0", id="serve-workers-0"),
    pytest.param(None, ["--threads", "0"], "threads must be a positive integer or unset, got 0", id="serve-threads-0"),
    pytest.param(None, ["--max-batch-size", "0"], "max_batch_size must be a positive integer, got 0", id="serve-max-batch-size-0"),
    pytest.param(None, ["--max-wait-ms", "5000"], "max_wait_ms must be between 0 and 1000 ms, got 5000", id="serve-max-wait-too-long"),
    pytest.param(None, ["--max-queue", "1"], "max_queue (1) is below max_items (64)", id="serve-queue-below-items"),
    pytest.param(None, ["--backend", "onnx"], "no .onnx file in", id="serve-onnx-backend-without-onnx"),
]


@pytest.mark.parametrize("damage,extra,message", SERVE_CASES)
def test_serve_refuses_bad_input_before_binding(workspace, tmp_path, capsys, monkeypatch, damage, extra, message):
    import uvicorn

    def bind(*args, **kwargs):
        raise AssertionError("serve reached uvicorn.run: it would have bound the port")

    monkeypatch.setattr(uvicorn, "run", bind)
    c = Case(tmp_path, workspace)
    model = damage(c) if damage else c.model
    status, err = _run_cli(["serve", str(model), "--port", "0", *extra], capsys)
    assert status == 2 and "Traceback" not in err, err[-2000:]
    assert message in err.strip().splitlines()[-1], err[-2000:]


def test_serve_fails_before_binding_its_port_as_a_real_process(workspace, tmp_path):
    """The installed command, end to end: exit 2, one line, and the port still free."""
    import socket

    c = Case(tmp_path, workspace)
    truncated_weights(c)
    with socket.socket() as probe:  # a free port, released for the server to (not) take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("serve", str(c.model), "--port", str(port), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("hfcompress: error: ") and "truncated or corrupt" in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # nobody holds it


# --- run: the recipe file, its overrides and what its stages read ------------------------------------------
def _quantize_corrupt_onnx(c: Case, recipe: dict) -> None:
    recipe["stages"] = [{"stage": "quantize", "model": str(corrupt_onnx(c)), "onnx": {"mode": "dynamic"}}]


RUN_CASES = [
    pytest.param(lambda c, r: None, ["--overwrite", "stages.student.training.alpha=1.5"], "alpha=1.5 is outside [0, 1]", id="run-override-after-flags"),
    pytest.param(lambda c, r: None, ["--overwrite", "alpha"], "override 'alpha' is not key=value", id="run-bad-override-after-flags"),
    pytest.param(lambda c, r: None, ["--overwrite", "--bogus"], "unrecognized arguments: --bogus", id="run-unknown-flag"),
    pytest.param(lambda c, r: None, ["stages.student.training.nope=1"], "unknown key 'training.nope'", id="run-override-unknown-key"),
    pytest.param(lambda c, r: r.update(seed="abc"), [], "seed", id="run-seed-not-a-number"),
    pytest.param(lambda c, r: r["stages"][1]["training"].update(learning_rate="fast"), [], "learning_rate", id="run-learning-rate-not-a-number"),
    pytest.param(lambda c, r: r["stages"][1]["training"].update(save_steps=0), [], "save_steps 0.0 must be > 0", id="run-save-steps-0"),
    pytest.param(lambda c, r: r["stages"][1]["training"].update(per_device_train_batch_size=0), [], "per_device_train_batch_size 0 must be at least 1",
                 id="run-batch-size-0"),
    pytest.param(lambda c, r: r["stages"][2].update(latency=True, threads=0), [], "threads, latency_samples, repeats and latency_batch_sizes must be positive",
                 id="run-evaluate-threads-0"),
    pytest.param(lambda c, r: r["stages"].append({"stage": "export", "model": "student", "batch_sizes": [0]}), [],
                 "parity batch sizes and sequence lengths must be positive lists", id="run-export-batch-size-0"),
    pytest.param(lambda c, r: r["stages"].append({"stage": "export", "model": "student", "opset": 3}), [], "opset 3 is not an ONNX opset",
                 id="run-export-opset-too-old"),
    pytest.param(lambda c, r: r["stages"][0].update(model=str(config_not_json(c))), [], "config.json is not valid JSON", id="run-config-not-json"),
    pytest.param(lambda c, r: r["stages"][0].update(model=str(weights_file(c))), [], "is a file, not a directory", id="run-file-as-model-dir"),
    pytest.param(lambda c, r: r["stages"][0].update(model=str(empty_dir(c))), [], "has no config.json", id="run-empty-model-dir"),
    pytest.param(lambda c, r: _quantize_corrupt_onnx(c, r), [], "does not load as ONNX (it holds no graph)", id="run-quantize-corrupt-onnx"),
    pytest.param(lambda c, r: r["data"].update(path=str(empty_dir(c))), [], "could not be loaded", id="run-empty-data-dir"),
    pytest.param(lambda c, r: output_is_a_file(c), [], "is a file: choose a directory path", id="run-output-is-a-file"),
]


@pytest.mark.parametrize("edit,extra,message", RUN_CASES)
def test_bad_recipes_and_run_arguments(workspace, tmp_path, capsys, edit, extra, message):
    c = Case(tmp_path, workspace)
    recipe = distill_recipe(c.model, c.data, c.out)
    edit(c, recipe)
    path = write_recipe(recipe, tmp_path / "recipe.yaml")
    before = tree_snapshot(c.out)
    status, err = _run_cli(["run", str(path), *extra], capsys)
    assert status == 2 and "Traceback" not in err, err[-2000:]
    assert message in err.strip().splitlines()[-1], err[-2000:]
    assert tree_snapshot(c.out) == before


@pytest.mark.parametrize("content,message", [
    pytest.param(b"name: caf\xe9\n", "recipe.yaml line 1 is not UTF-8 (byte 0xe9 at column 10)", id="non-utf8"),
    pytest.param(b"", "must be a mapping with name, output_dir, data and stages", id="empty-file"),
    pytest.param(None, "is a directory: give the path to a YAML recipe", id="directory"),
])
def test_unreadable_recipe_files(tmp_path, capsys, content, message):
    path = tmp_path / "recipe.yaml"
    path.mkdir() if content is None else path.write_bytes(content)
    status, err = _run_cli(["run", str(path)], capsys)
    assert status == 2 and message in one_error_line(err)


# --- disk space: refused before anything is written, with needed and free bytes -------------------------------
@pytest.fixture
def free_space(monkeypatch):
    """Set the free bytes hfcompress reads for any output (the real disk is never filled)."""
    from hfcompress.utils import disk

    monkeypatch.delenv(disk.SKIP_ENV, raising=False)

    def set_free(n: int) -> None:
        monkeypatch.setattr(disk, "free_bytes", lambda path: n)

    return set_free


def _factorize_recipe(c: Case, **training) -> str:
    recipe = distill_recipe(c.model, c.data, c.out)
    recipe["stages"] = [{"stage": "factorize", "model": str(c.model), "energy": 0.9}]
    if training:
        recipe["stages"] = [dict(distill_recipe(c.model, c.data, c.out)["stages"][0], training={"num_train_epochs": 1, **training})]
    return str(write_recipe(recipe, c.tmp / "recipe.yaml"))


def _needed_bytes(line: str) -> int:
    import re

    return int(re.search(r"needs about [\d.]+ GiB \(([\d,]+) bytes\)", line).group(1).replace(",", ""))


@pytest.mark.parametrize("command", ["run", "export", "factorize", "trim-vocab", "card"])
def test_a_disk_too_full_is_refused_before_anything_is_written(workspace, tmp_path, capsys, free_space, command):
    c = Case(tmp_path, workspace)
    free_space(1000)
    argv = {
        "run": lambda: ["run", _factorize_recipe(c)],
        "export": lambda: _ex(c),
        "factorize": lambda: _fz(c),
        "trim-vocab": lambda: _tv(c),
        "card": lambda: ["card", str(c.model), "--output", str(c.out)],
    }[command]()
    line = _expect_one_error(argv, capsys, "is free: free some space, write the output elsewhere", c.out)
    assert "only 0.00 GiB (1,000 bytes) is free" in line and "HFCOMPRESS_SKIP_DISK_CHECK=1" in line, line
    assert _needed_bytes(line) > (c.model / "model.safetensors").stat().st_size  # at least a copy of the weights
    assert not c.out.exists()


def test_a_run_with_enough_space_proceeds_and_the_skip_variable_skips_the_check(workspace, tmp_path, capsys, free_space, monkeypatch):
    from hfcompress.utils.disk import SKIP_ENV

    c = Case(tmp_path, workspace)
    recipe = _factorize_recipe(c)
    free_space(1 << 40)
    assert main(["run", recipe]) == 0
    assert (c.out / "factorized" / "model.safetensors").is_file()
    free_space(1000)
    monkeypatch.setenv(SKIP_ENV, "1")
    assert main(["run", recipe, "--overwrite"]) == 0


def test_training_needs_room_for_its_checkpoints(workspace, tmp_path, capsys, free_space):
    """The estimate grows with save_total_limit: each checkpoint holds the weights and Adam's two moments."""
    c = Case(tmp_path, workspace)
    free_space(1000)
    needed = {}
    for limit in (1, 4):
        status, err = _run_cli(["run", _factorize_recipe(c, save_total_limit=limit)], capsys)
        assert status == 2
        needed[limit] = _needed_bytes(one_error_line(err))
    weights = (c.model / "model.safetensors").stat().st_size
    assert needed[4] - needed[1] >= 3 * 3 * weights  # three more checkpoints of 3x the weights (with the margin on top)


# --- the well-formed neighbours of those inputs succeed -------------------------------------------------------
def _read_json(path: Path):
    import json

    return json.loads(path.read_text())


def _run_with_override_after_flags(c: Case) -> None:
    recipe = _factorize_recipe(c)
    assert main(["run", recipe, "--overwrite", "stages.factorized.energy=0.5"]) == 0
    assert _read_json(c.out / "factorized" / FACTORIZATION_FILE)["config"]["energy"] == 0.5


def _evaluate_into_a_new_directory(c: Case) -> None:
    result = c.tmp / "new" / "dir" / "result.json"
    assert main(_ev(c, "--max-length", "128", "--output", str(result))) == 0  # 128: exactly the model's positions
    assert "accuracy" in _read_json(result)


def _export_caps_long_parity_lengths(c: Case) -> None:
    assert main(_ex(c, "--sequence-lengths", "16", "4096")) == 0  # longer than the model reads: checked at its 128 positions
    checks = _read_json(c.out / PARITY_FILE)["files"]["model.onnx"]["checks"]
    assert {check["sequence_length"] for check in checks} == {16, 128}


def _card_then_push_dry_run(c: Case) -> None:
    assert main(["card", str(c.model), "--output", str(c.out), "--repo-id", "me/tiny"]) == 0
    assert (c.out / "README.md").is_file() and main(["push", str(c.out), "--repo-id", "me/tiny", "--dry-run"]) == 0


def _factorize_and_trim(c: Case) -> None:
    assert main(_fz(c, "--energy", "0.9", "--exclude-modules")) == 0 and (c.out / FACTORIZATION_FILE).is_file()
    assert main(["trim-vocab", str(c.model), "--output", str(c.tmp / "trimmed"), "--data", str(c.data)]) == 0


@pytest.mark.parametrize("check", [_run_with_override_after_flags, _evaluate_into_a_new_directory, _export_caps_long_parity_lengths,
                                   _card_then_push_dry_run, _factorize_and_trim], ids=lambda f: f.__name__.strip("_").replace("_", "-"))
def test_well_formed_neighbours_succeed(workspace, tmp_path, capsys, check):
    check(Case(tmp_path, workspace))
    assert "Traceback" not in capsys.readouterr().err

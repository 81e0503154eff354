"""The artifacts map: file names only in hfcompress/artifacts.py; compression summaries in one form the card renders blind."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from hfcompress import artifacts
from hfcompress.artifacts import CompressionSummary, read_compression_summaries, write_compression_summary, write_method_report
from hfcompress.errors import ConfigError
from hfcompress.hub import CardConfig, render_model_card

from tests.conftest import REPO, tiny_bert_config

FILE_NAMES = {value for name, value in vars(artifacts).items() if name.endswith(("_FILE", "_NAME")) and isinstance(value, str)}
# A file name as a word of its own: not "write_compression_report", not "x.parity.json".
FILE_NAME = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(FILE_NAMES, key=len, reverse=True))) + r")(?!\w)")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: prose may name the files it describes."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, owners) and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }


def test_file_names_are_spelled_only_in_the_artifacts_module():
    assert {"sparsity_report.json", "quantization.json", "hfcompress_recipe.yaml", "compression_summary.json", "push.json"} <= FILE_NAMES
    found = []
    for path in sorted((REPO / "hfcompress").rglob("*.py")):
        if path == Path(artifacts.__file__):
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings and FILE_NAME.search(node.value):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, "file names spelled outside hfcompress/artifacts.py (import the constant instead):\n" + "\n".join(found)


WEIGHT_SHARING = CompressionSummary(  # a method hfcompress does not have: the card must render it all the same
    method="weight-sharing", title="Weight sharing", applied="weight-shared",
    summary="Similar rows of each Linear weight were clustered and share one stored row.",
    details_file="weight_sharing.json", settings={"clusters": 16, "targets": ["query", "value"], "schedule": {"start": 0, "end": 10}},
    results={"rows_shared": 0.625}, tables=[{"columns": ["layer", "clusters"], "rows": {"bert.encoder.layer.0.attention.self.query": 16}}],
    tags=["weight-sharing"],
)


def test_card_renders_the_summary_of_a_method_it_has_never_heard_of(tmp_path):
    from transformers import BertForSequenceClassification

    model = tmp_path / "shared-model"
    BertForSequenceClassification(tiny_bert_config(100, num_hidden_layers=2)).save_pretrained(model)
    write_method_report(model, {"clusters": 16}, WEIGHT_SHARING)
    card = render_model_card(model, CardConfig())
    text = card.text
    assert "for text classification, weight-shared. Produced with hfcompress." in text
    section = text.split("### Weight sharing\n", 1)[1].split("\n#", 1)[0]
    assert "Similar rows of each Linear weight were clustered and share one stored row." in section
    for line in ("- method: weight-sharing", "- clusters: 16", "- targets: query, value", "- schedule: start=0, end=10",
                 "- rows_shared: 0.6250", "| layer | clusters |", "| `bert.encoder.layer.0.attention.self.query` | 16 |"):
        assert line in section
    assert "weight-sharing" in card.data.tags


def test_summaries_accumulate_per_method_and_malformed_ones_fail(tmp_path):
    write_compression_summary(tmp_path, WEIGHT_SHARING)
    other = CompressionSummary(method="other", title="Other", applied="changed", summary="Changed.", details_file="other.json")
    write_compression_summary(tmp_path, other)
    rewritten = CompressionSummary(**{**WEIGHT_SHARING.__dict__, "results": {"rows_shared": 0.5}})
    write_compression_summary(tmp_path, rewritten)  # a checkpoint saved again replaces its summary, keeps the others
    assert read_compression_summaries(tmp_path) == [other, rewritten]

    with pytest.raises(ConfigError, match="malformed"):
        CompressionSummary(method="x", title="X", applied="x-ed", summary="", details_file="x.json")
    with pytest.raises(ConfigError, match="malformed"):
        CompressionSummary(method="x", title="X", applied="x-ed", summary="X.", details_file="x.json", tables=[{"rows": {}}])
    (tmp_path / artifacts.COMPRESSION_SUMMARY_FILE).write_text(json.dumps([{"method": "x"}]))
    with pytest.raises(ConfigError, match="not a compression summary"):
        read_compression_summaries(tmp_path)

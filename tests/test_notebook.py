"""notebooks/compress_sst2.ipynb: committed without outputs, and executed end to end on a small SST-2 subset."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "compress_sst2.ipynb"


def _read_notebook():
    nbformat = pytest.importorskip("nbformat", reason="pip install 'hfcompress[notebook]'")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_clean_with_a_parameters_cell():
    nb = _read_notebook()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell is the (papermill-style) parameters cell"
    assert "HFC_NB_TRAIN_SAMPLES" in code[0].source and "HFC_NB_OUTPUT" in code[0].source


@pytest.mark.integration
@pytest.mark.slow
def test_notebook_runs_on_a_small_subset(minilm_path, sst2_path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="pip install 'hfcompress[notebook]'")
    from huggingface_hub import ModelCard

    nb = _read_notebook()
    out = tmp_path / "run"
    settings = {
        "HFC_NB_TEACHER": str(minilm_path), "HFC_NB_DATA": str(sst2_path), "HFC_NB_OUTPUT": str(out),
        "HFC_NB_TRAIN_SAMPLES": "256", "HFC_NB_EVAL_SAMPLES": "128", "HFC_NB_TEACHER_EPOCHS": "1", "HFC_NB_EPOCHS": "1",
        "HFC_NB_LATENCY_SAMPLES": "32", "HFC_NB_LATENCY_REPEATS": "1", "HFC_NB_THREADS": "1",
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    }
    for name, value in settings.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(name, value)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # cwd as Jupyter sets it
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = {mime for o in outputs if o.output_type == "display_data" for mime in o.data}
    assert {"image/png", "text/markdown"} <= shown, "the report chart and tables are displayed inline"

    report = json.loads((out / "report" / "compression_report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "student", "student onnx", "student int8"]
    for row in rows.values():
        assert isinstance(row["accuracy"], float) and 0.0 <= row["accuracy"] <= 1.0
        assert row["num_examples"] == 128 and row["latency_ms_p50_b1"] > 0
    assert rows["student"]["num_parameters"] < rows["teacher"]["num_parameters"]
    assert rows["student int8"]["size_mb"] < rows["student onnx"]["size_mb"]
    assert (out / "report" / "compression_report.png").is_file()

    sparsity = json.loads((out / "student" / "sparsity_report.json").read_text())
    assert sparsity["method"] == "structured" and sparsity["intermediate_size"] == 768  # half of MiniLM's 1536 neurons
    assert set(sparsity["heads_kept"].values()) == {9}  # a quarter of the 12 heads removed in each layer
    parity = json.loads((out / "student-onnx" / "parity.json").read_text())
    assert parity["files"]["model.onnx"]["passed"]

    release = out / "release"
    card = ModelCard.load(release / "README.md")
    assert {"distillation", "pruning", "onnx", "int8"} <= set(card.data.tags)
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.license == "apache-2.0"
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "accuracy"
    assert (release / "model.safetensors").is_file() and (release / "onnx" / "model_quantized.onnx").is_file()
    assert not list(release.rglob("*.bin")), "no pickles in the release folder"

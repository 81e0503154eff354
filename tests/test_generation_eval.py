"""Evaluation of generative LMs: strided perplexity, generation speed, peak RSS and size, llama.cpp, the evaluate stage, the benchmark.

The generation runtimes (``hfcompress.generation.load_causal_lm``) come from other parts of issue 21;
:class:`TorchLM` stands in for the PyTorch one here, with the protocol's ``logits``/``generate``/``tokenizer``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from hfcompress.artifacts import EVALUATION_RESULTS_FILE
from hfcompress.errors import ConfigError, DataError, ModelError
from hfcompress.evaluation.generation import (
    GenerationSettings,
    GenerationVariant,
    evaluate_generation,
    generation_speed,
    load_variant,
    measure_in_subprocess,
    perplexity,
    perplexity_windows,
    size_on_disk_mb,
)
from hfcompress.evaluation.llamacpp import llama_cpp_missing, load_llamacpp
from hfcompress.utils.bench import SMOLLM2_DIR, SMOLLM2_GGUF, SMOLLM2_TEACHER
from tests.conftest import REPO, SHARED

STAND_IN = "test_generation_eval:load_torch_lm"
WIKITEXT = SHARED / "data" / "wikitext2-raw" / "wiki.test.lf.raw"
GGUF, TEACHER = SMOLLM2_GGUF, SMOLLM2_TEACHER


class TorchLM:
    """Stand-in for the protocol's PyTorch runtime: a transformers model and its tokenizer."""

    def __init__(self, path):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.config, self.generation_config = self.model.config, self.model.generation_config

    def logits(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def generate(self, input_ids, attention_mask=None, *, max_new_tokens, do_sample=False, eos_token_id=None, streamer=None, **_):
        return self.model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   eos_token_id=eos_token_id, pad_token_id=0, streamer=streamer)


def load_torch_lm(path, backend="pytorch", threads=None):
    if backend != "pytorch":
        raise ModelError(f"the test's stand-in runs PyTorch checkpoints only, not {backend}")
    return TorchLM(path)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A random 2-layer Llama (width 64) with a byte-level BPE tokenizer, as the benchmark's --quick builds it."""
    from tests.test_tasks import WORDS

    bench = _load_bench()
    directory = tmp_path_factory.mktemp("tiny-llama")
    return Path(bench.tiny_llama(directory, " ".join(WORDS * 40)))


def _text(words: int = 400) -> str:
    import random

    from tests.test_tasks import WORDS

    rng = random.Random(0)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_smollm2", REPO / "scripts" / "bench_smollm2.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


# --- perplexity ---------------------------------------------------------------------------------


def test_non_overlapping_windows_score_all_but_each_windows_first_token():
    windows = perplexity_windows(10, context=4, stride=4)
    assert [(w.begin, w.end, w.first) for w in windows] == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert sum(w.end - w.first for w in windows) == 7


def test_strided_windows_score_every_token_but_the_first_once_with_the_rest_as_context():
    windows = perplexity_windows(10, context=4, stride=2)
    assert [(w.begin, w.end, w.first) for w in windows] == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    scored = [t for w in windows for t in range(w.first, w.end)]
    assert scored == list(range(1, 10))


def _guide_nll(model, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    """transformers' perplexity guide: labels -100 outside each window's last (end - previous end) tokens; the loss counts the rest."""
    nll, count, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        window = ids[begin:end].unsqueeze(0)
        labels = window.clone()
        labels[:, : -(end - previous_end)] = -100
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            nll += float(model(window, labels=labels).loss) * scored
        count += scored
        previous_end = end
        if end == len(ids):
            break
    return nll, count


@pytest.mark.parametrize("stride", [16, 6])
def test_perplexity_matches_the_transformers_guide_by_hand(tiny_llama, stride):
    lm = TorchLM(tiny_llama)
    ids = torch.tensor(lm.tokenizer.encode(_text(), add_special_tokens=False)[:70])
    result = perplexity(lm.logits, ids.tolist(), context=16, stride=stride)
    nll, count = _guide_nll(lm.model, ids, 16, stride)
    assert result["tokens_scored"] == count == (69 if stride < 16 else 70 - math.ceil(70 / 16))
    assert result["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert (result["context"], result["stride"]) == (16, stride)


def test_bad_windows_and_short_texts_are_refused():
    with pytest.raises(ConfigError, match="stride <= context"):
        GenerationSettings(context=8, stride=16)
    with pytest.raises(ConfigError, match="max_tokens must be at least 2"):
        GenerationSettings(max_tokens=1)
    with pytest.raises(DataError, match="perplexity needs at least 2"):
        perplexity(lambda ids: None, [5])


# --- speed, memory, size ------------------------------------------------------------------------


def test_generation_speed_gives_positive_figures_for_exactly_the_asked_tokens(tiny_llama):
    lm = TorchLM(tiny_llama)
    speed = generation_speed(lm, list(range(3, 19)), new_tokens=5, warmup=1, repeats=2)
    assert speed["prompt_tokens"] == 16 and speed["new_tokens"] == 5
    assert speed["ttft_ms"] > 0 and speed["decode_tokens_per_s"] > 0
    assert speed["prefill_tokens_per_s"] == pytest.approx(16 / (speed["ttft_ms"] / 1e3), rel=1e-2)


def test_a_runtime_that_stops_early_is_refused(tiny_llama):
    class StopsAtOne(TorchLM):
        def generate(self, input_ids, attention_mask=None, *, max_new_tokens, **kwargs):
            return super().generate(input_ids, attention_mask, max_new_tokens=1, **kwargs)

    class StreamsNothing(TorchLM):
        def generate(self, input_ids, attention_mask=None, *, streamer=None, **kwargs):
            return super().generate(input_ids, attention_mask, **kwargs)

    with pytest.raises(ModelError, match="generate made 1 new tokens, not 4"):
        generation_speed(StopsAtOne(tiny_llama), [3, 4, 5], new_tokens=4, warmup=0, repeats=1)
    with pytest.raises(ModelError, match="streamed 0 of its 4 new tokens"):
        generation_speed(StreamsNothing(tiny_llama), [3, 4, 5], new_tokens=4, warmup=0, repeats=1)


def test_a_text_shorter_than_the_prompt_is_a_data_error(tiny_llama):
    with pytest.raises(DataError, match="fewer than the 512-token prompt"):
        evaluate_generation(TorchLM(tiny_llama), "the film was good")


def test_size_on_disk_counts_the_files_a_variant_needs(tiny_llama, tmp_path):
    weights = (tiny_llama / "model.safetensors").stat().st_size
    assert size_on_disk_mb(tiny_llama) == round(weights / 1e6, 3)
    (tmp_path / "m.gguf").write_bytes(b"\0" * 2_000_000)
    assert size_on_disk_mb(tmp_path / "m.gguf") == 2.0
    with pytest.raises(ModelError, match="holds no model files"):
        size_on_disk_mb(tmp_path / "empty")


def test_a_missing_runtime_is_named():
    with pytest.raises(ModelError, match="needs no_such_module:load, which this installation lacks"):
        load_variant(GenerationVariant("x", "m", "no_such_module:load"), threads=1)


def test_the_thread_count_reaches_each_runtime_under_its_own_name(tmp_path_factory):
    from tests.decoder_helpers import exported

    export = exported("llama", "dynamo", tmp_path_factory)
    lm = load_variant(GenerationVariant("onnx", str(export), "hfcompress.generation:load_causal_lm", {"backend": "onnxruntime"}), threads=1)
    assert lm.session.get_session_options().intra_op_num_threads == 1
    assert lm.generate(lm.tokenizer("hello", return_tensors="pt").input_ids, max_new_tokens=2).shape[1] >= 3


@pytest.mark.slow
def test_each_variant_is_measured_in_its_own_process(tiny_llama):
    settings = GenerationSettings(context=16, stride=16, max_tokens=64, prompt_tokens=8, new_tokens=3, warmup=0, repeats=1, threads=1)
    result = measure_in_subprocess(GenerationVariant("tiny", str(tiny_llama), STAND_IN), _text(), settings)
    assert result["name"] == "tiny" and result["tokens_scored"] == 60 and result["windows"] == 4
    assert result["peak_rss_mb"] > 50 and result["size_mb"] == size_on_disk_mb(tiny_llama)
    assert result["perplexity_protocol"] == f"60 tokens scored in 4 windows of 16 tokens (non-overlapping), over the first 64 of the text's {result['text_tokens']} tokens"
    assert result["hardware"]["threads"] == 1 and result["decode_tokens_per_s"] > 0


# --- the evaluate stage and the report ----------------------------------------------------------


@pytest.mark.slow
def test_evaluate_stage_reports_perplexity_and_speed_of_a_tiny_gpt2(tmp_path, monkeypatch):
    from hfcompress.recipes import parse_recipe, run_recipe
    from hfcompress.recipes.stages import evaluate
    from tests.test_tasks import _lm_data, _tiny_gpt2

    monkeypatch.setattr(evaluate, "CAUSAL_LM_LOADER", STAND_IN)
    data, model = _lm_data(tmp_path / "data"), _tiny_gpt2(tmp_path / "gpt2")
    stage = {"stage": "evaluate", "models": [str(model)], "generation": True, "context": 16, "stride": 8, "max_tokens": 96,
             "prompt_tokens": 8, "new_tokens": 3, "warmup": 0, "repeats": 1, "threads": 1}
    outputs = run_recipe(parse_recipe({"name": "lm-eval", "output_dir": str(tmp_path / "run"), "data": data, "stages": [stage]}))
    results = json.loads((outputs["evaluation"] / EVALUATION_RESULTS_FILE).read_text())[0]
    generation = results["generation"]
    assert generation["tokens_scored"] == 95 and (generation["context"], generation["stride"]) == (16, 8)
    row = json.loads((outputs["evaluation"] / "compression_report.json").read_text())["rows"][0]
    assert row["accuracy"] == row["perplexity"] == generation["perplexity"] and row["quality_metric"] == "perplexity"
    assert row["split_perplexity"] == results["perplexity"]  # the task's own perplexity over the split's rows stays
    assert row["decode_tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    report = (outputs["evaluation"] / "compression_report.md").read_text()
    assert "| decode tok/s |" in report and "95 tokens scored in 11 windows of 16 tokens (moving by 8, each scoring only its new tokens)" in report


def test_generation_on_a_classification_recipe_is_refused_before_anything_runs(tmp_path, minilm_path, sst2_path):
    from hfcompress.recipes import parse_recipe, run_recipe

    stage = {"stage": "evaluate", "models": [str(minilm_path)], "generation": True}
    recipe = {"name": "x", "output_dir": str(tmp_path / "run"), "data": {"path": str(sst2_path), "eval_split": "dev"}, "stages": [stage]}
    with pytest.raises(ConfigError, match="generation: true measures language models, and data.task is 'text-classification'"):
        run_recipe(parse_recipe(recipe))
    with pytest.raises(ConfigError, match="stride <= context"):
        parse_recipe({**recipe, "stages": [{**stage, "stride": 1024}]})


def test_generation_rows_render_in_the_report_and_the_card_table(tmp_path):
    from hfcompress.evaluation import compression_row, write_compression_report
    from hfcompress.hub.card import CardConfig, render_model_card

    generation = {"perplexity": 36.2, "perplexity_protocol": "8,176 tokens scored in 16 non-overlapping windows of 512 tokens",
                  "prefill_tokens_per_s": 900.0, "decode_tokens_per_s": 60.0, "ttft_ms": 570.0, "peak_rss_mb": 800.0,
                  "hardware": {"cpu": "test cpu", "isa": [], "cores": 2, "threads": 2, "machine": "x86_64"}}
    rows = [compression_row("teacher", {"size_mb": 538.0}, generation=generation),
            compression_row("int4", {"size_mb": 120.0}, generation={**generation, "perplexity": 37.0, "decode_tokens_per_s": 90.0})]
    report = write_compression_report(rows, tmp_path / "eval")
    assert report["rows"][1]["decode_speedup"] == 1.5 and report["quality_metric"] == "perplexity"
    markdown = (tmp_path / "eval" / "compression_report.md").read_text()
    assert "| int4 | 37.000 | 120.0 | 900.0 | 90.0 | 1.50× | 570.0 | 800 |" in markdown
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    text = str(render_model_card(model, CardConfig(report=str(tmp_path / "eval"))))
    assert "| int4 | 37.000 | 900.0 | 90.0 | 570.0 | 800 |" in text
    assert "Perplexity: 8,176 tokens scored in 16 non-overlapping windows of 512 tokens." in text


# --- llama.cpp ----------------------------------------------------------------------------------


def test_llamacpp_loader_names_what_is_missing(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_llamacpp(tmp_path / "none.gguf")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    if llama_cpp_missing():
        with pytest.raises(ModelError, match=r"pip install 'hfcompress\[llamacpp\]'"):
            load_llamacpp(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(llama_cpp_missing() is not None, reason="llama-cpp-python is not installed (pip install 'hfcompress[llamacpp]')")
@pytest.mark.skipif(not (GGUF.is_file() and TEACHER.is_dir()), reason=f"the SmolLM2 GGUF and its conversion are not in {SMOLLM2_DIR} (scripts/bench_smollm2.py fetches them)")
def test_llamacpp_matches_transformers_on_the_same_weights():
    llama, torch_lm = load_llamacpp(GGUF, threads=2, context=512), TorchLM(TEACHER)
    text = WIKITEXT.read_text(encoding="utf-8")[:20_000]
    ids = torch_lm.tokenizer.encode(text, add_special_tokens=False)
    assert llama.tokenizer.encode(text, add_special_tokens=False) == ids
    prompt = torch.tensor([torch_lm.tokenizer.encode("The capital of France is", add_special_tokens=False)])
    out = llama.generate(prompt, max_new_tokens=3, eos_token_id=-1)
    assert torch_lm.tokenizer.decode(out[0, prompt.shape[1]:]).startswith(" Paris")
    ours, theirs = perplexity(torch_lm.logits, ids[:512], 256, 256), perplexity(llama.logits, ids[:512], 256, 256)
    assert theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=0.02)


# --- the benchmark ------------------------------------------------------------------------------


def test_bench_help_runs():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_smollm2.py"), "--help"], capture_output=True, text=True, check=True)
    assert "--quick" in out.stdout and "--student" in out.stdout


@pytest.mark.slow
def test_bench_quick_measures_what_this_checkout_builds(tmp_path, monkeypatch):
    bench = _load_bench()
    monkeypatch.setattr(bench, "CAUSAL_LM_LOADER", STAND_IN)
    monkeypatch.chdir(REPO)
    out = tmp_path / "smoke"
    assert bench.main(["--quick", "--work-dir", str(tmp_path / "work"), "--output", str(out), "--threads", "1"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["key"]: r for r in report["rows"]}
    assert list(rows)[0] == "teacher"
    for row in rows.values():
        assert {"name", "perplexity", "size_mb", "decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_mb", "ttft_ms", "threads", "cpu"} <= set(row)
        assert row["perplexity"] > 1 and row["decode_tokens_per_s"] > 0
    assert report["skipped"]["llamacpp"] == "no GGUF for the tiny model of --quick"
    assert {"teacher", "nf4"} <= set(rows) and rows["nf4"]["size_mb"] < rows["teacher"]["size_mb"]
    assert set(report["skipped"]) | set(rows) >= {"teacher", "onnx", "llamacpp", "nf4", "int4_rtn", "genai_int4", "student_int4"}
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_a_spawned_variant_reports_its_own_peak_memory_not_its_parents():
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from hfcompress.evaluation.generation import peak_rss_mb

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB touched in the parent: ru_maxrss would hand it to every spawned child
    parent = peak_rss_mb()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        child = pool.submit(peak_rss_mb).result()
    assert ballast.sum() > 0 and child < parent - 300

"""Shared fixtures: tiny random models for unit tests, the shared MiniLM and SST-2 for integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "assets"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
SST2 = SHARED / "data" / "sst2"
CIFAR10 = SHARED / "data" / "cifar10"


def _require(path: Path) -> Path:
    """A shared asset; without it a developer's run skips, but CI fails (a green CI must have run every test)."""
    if not path.exists():
        message = f"shared asset {path} is missing (expected ../shared beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI must run the integration tests", pytrace=False)
        pytest.skip(message)
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``requires_optimum`` skip without the optimum extra; in the Optimum CI environment
    (``HFC_REQUIRE_OPTIMUM=1``) they fail instead, so that a broken Optimum install cannot pass as skips."""
    from hfcompress.utils.imports import optimum_onnx_missing

    marked = [item for item in items if item.get_closest_marker("requires_optimum")]
    reason = optimum_onnx_missing() if marked else None
    if reason is None:
        return
    if os.environ.get("HFC_REQUIRE_OPTIMUM") == "1":
        raise pytest.UsageError(f"HFC_REQUIRE_OPTIMUM=1 but {reason}")
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory):
    """hfcompress's cache (remembered file hashes) in a directory of this session, not the user's ~/.cache; subprocesses inherit it."""
    from hfcompress.utils.hash_cache import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("hfcompress-cache"))
    yield Path(os.environ[CACHE_ENV])
    if before is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return _require(MINILM)


@pytest.fixture(scope="session")
def sst2_path() -> Path:
    return _require(SST2)


@pytest.fixture(scope="session")
def cifar10_path() -> Path:
    return _require(CIFAR10)


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    values = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, num_labels=2,
    )
    values.update(overrides)
    return BertConfig(**values)


def save_tiny_wordpiece_tokenizer(directory: Path, vocab_size: int) -> None:
    """A WordPiece tokenizer whose ids fit a tiny model's vocabulary, for checkpoints that export (parity tokenizes real text)."""
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *".,!?'-0123456789"]
    words += [f"[unused{i}]" for i in range(vocab_size - len(words))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)


@pytest.fixture
def tiny_sst2_dir(tmp_path, sst2_path) -> Path:
    """The first rows of the real SST-2 files: 64 for training, 32 for evaluation."""
    out = tmp_path / "sst2"
    out.mkdir()
    for name, rows in (("train.tsv", 64), ("dev.tsv", 32)):
        lines = (sst2_path / name).read_text().splitlines()[: rows + 1]
        (out / name).write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def tiny_teacher_dir(tmp_path, tokenizer) -> Path:
    """A tiny random BERT classifier saved with the MiniLM tokenizer, so recipes can load it by path."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    out = tmp_path / "tiny-teacher"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def assert_compression_summary(directory: Path, method: str):
    """The summary of ``method`` in ``directory``'s compression summary file, in the common form, its details file beside it."""
    from hfcompress.artifacts import read_compression_summaries

    summaries = {s.method: s for s in read_compression_summaries(directory)}  # the common form is checked as it is read
    assert method in summaries, f"no {method} summary in {directory}: {sorted(summaries)}"
    summary = summaries[method]
    assert (Path(directory) / summary.details_file).is_file()
    assert summary.summary.endswith(".") and summary.tags and (summary.settings or summary.results)
    return summary

"""Vocabulary trimming: keep the tokens a corpus uses and rebuild the embeddings and the tokenizer to match.

Kept tokens keep their relative order and get new contiguous ids. The embedding rows (and a tied or
separate LM head) are gathered in that order, the fast tokenizer's ``tokenizer.json`` is rewritten
(vocabulary, BPE merges, special-token ids in the post-processor and padding), and the config's
special-token ids are remapped, so a sentence whose tokens are all kept gets the same predictions.
"""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from ..artifacts import VOCAB_TRIM_FILE, CompressionSummary, set_entries, write_method_report
from ..errors import ConfigError, ModelError
from ..utils.disk import check_free_space, model_bytes
from ..utils.io import atomic_output_dir, check_output_dir
from .config import VocabTrimConfig
SUPPORTED_MODELS = ("WordPiece", "BPE")
_CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "decoder_start_token_id")


def _tokenizer_json(tokenizer) -> dict:
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelError(
            f"vocabulary trimming needs a fast tokenizer (tokenizer.json), got {type(tokenizer).__name__}: "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in SUPPORTED_MODELS:
        raise ModelError(f"vocabulary trimming supports {' and '.join(SUPPORTED_MODELS)} tokenizers; this one is {kind}: keep its vocabulary")
    if kind == "BPE" and (spec["model"].get("continuing_subword_prefix") or spec["model"].get("end_of_word_suffix")):
        raise ModelError("vocabulary trimming supports BPE without subword prefixes/suffixes (GPT-2/RoBERTa style) only: keep this vocabulary")
    return spec


def count_token_ids(
    tokenizer,
    texts: Sequence,
    text_pairs: Optional[Sequence] = None,
    is_split_into_words: bool = False,
    batch_size: int = 1000,
) -> collections.Counter:
    """How often each token id occurs when ``tokenizer`` encodes ``texts`` (no truncation, no special tokens)."""
    counts: collections.Counter = collections.Counter()
    for start in tqdm(range(0, len(texts), batch_size), desc="Counting tokens", leave=False):
        batch = list(texts[start : start + batch_size])
        pairs = list(text_pairs[start : start + batch_size]) if text_pairs is not None else None
        encoded = tokenizer(batch, pairs, add_special_tokens=False, is_split_into_words=is_split_into_words, truncation=False)
        for ids in encoded["input_ids"]:
            counts.update(ids)
    return counts


def _bpe_merges(model_spec: dict) -> list[tuple[str, str]]:
    # tokenizers writes merges as "a b" strings (older) or [a, b] pairs (newer)
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model_spec.get("merges", [])]


def select_kept_ids(tokenizer, counts: collections.Counter, config: VocabTrimConfig, model_config=None) -> list[int]:
    """Old ids of the kept tokens, ascending: corpus tokens, specials, single characters, extras and their BPE parts."""
    spec = _tokenizer_json(tokenizer)
    vocab: dict[str, int] = spec["model"]["vocab"]
    by_id = _tokens_by_id(spec)
    unknown = [t for t in config.keep_tokens if t not in vocab]
    if unknown:
        raise ConfigError(f"keep_tokens {unknown[:5]} are not in the tokenizer's vocabulary: list tokens as the tokenizer spells them")
    keep = {i for i, n in counts.items() if n >= config.min_frequency and i in by_id}
    keep |= {vocab[t] for t in config.keep_tokens}
    keep |= {t["id"] for t in spec.get("added_tokens", [])}
    keep |= {i for i in tokenizer.all_special_ids if i in by_id}
    if model_config is not None:
        keep |= {getattr(model_config, k) for k in _CONFIG_TOKEN_IDS if isinstance(getattr(model_config, k, None), int)} & set(by_id)
    if config.keep_single_characters:
        keep |= {i for t, i in vocab.items() if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    if spec["model"]["type"] == "BPE":
        keep = _with_merge_parts(keep, by_id, vocab, _bpe_merges(spec["model"]))
    return sorted(keep)


def _tokens_by_id(spec: dict) -> dict[int, str]:
    """Every id the tokenizer can produce: the model's vocabulary and added tokens (which may lie beyond it)."""
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    by_id.update({t["id"]: t["content"] for t in spec.get("added_tokens", [])})
    return by_id


def _with_merge_parts(keep: set[int], by_id: dict[int, str], vocab: dict[str, int], merges: list[tuple[str, str]]) -> set[int]:
    """Close ``keep`` under "the two parts of the merge that builds a kept token": BPE reaches a token only through them."""
    parts = {a + b: (a, b) for a, b in merges}
    stack, closed = [by_id[i] for i in keep], set(keep)
    while stack:
        for part in parts.get(stack.pop(), ()):
            if part in vocab and vocab[part] not in closed:
                closed.add(vocab[part])
                stack.append(part)
    return closed


def _remap_ids(node: Any, remap: dict[int, int]) -> Any:
    """Rewrite special-token ids inside a post-processor (Template/Bert/Roberta/Sequence) spec."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "ids" and isinstance(value, list):
                out[key] = [remap[i] for i in value]
            elif key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                out[key] = [value[0], remap[value[1]]]
            else:
                out[key] = _remap_ids(value, remap)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, remap) for v in node]
    return node


def trimmed_tokenizer(tokenizer, kept_ids: Sequence[int]):
    """A tokenizer of the same class whose vocabulary is ``kept_ids`` (old ids) renumbered 0..n-1 in order."""
    spec = _tokenizer_json(tokenizer)
    remap = {old: new for new, old in enumerate(kept_ids)}
    vocab = spec["model"]["vocab"]
    by_id = _tokens_by_id(spec)
    kept_tokens = {by_id[i] for i in kept_ids}
    # added tokens outside the model's vocabulary stay outside it, keeping their place after it
    spec["model"]["vocab"] = {by_id[old]: new for old, new in remap.items() if by_id[old] in vocab}
    if spec["model"]["type"] == "BPE":
        merges = [(a, b) for a, b in _bpe_merges(spec["model"]) if a in kept_tokens and b in kept_tokens and a + b in kept_tokens]
        spec["model"]["merges"] = [list(m) for m in merges]
    spec["added_tokens"] = [dict(t, id=remap[t["id"]]) for t in spec.get("added_tokens", [])]
    if spec.get("post_processor"):
        spec["post_processor"] = _remap_ids(spec["post_processor"], remap)
    if spec.get("padding") and spec["padding"].get("pad_id") is not None:
        spec["padding"]["pad_id"] = remap[spec["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        # Only tokenizer.json may define the vocabulary on reload; stale slow-tokenizer files would contradict it.
        for name in ("vocab.txt", "vocab.json", "merges.txt"):
            (Path(tmp) / name).unlink(missing_ok=True)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(tmp, use_fast=True)


def trim_model_embeddings(model: PreTrainedModel, kept_ids: Sequence[int]) -> None:
    """Keep only the rows ``kept_ids`` of the input embeddings and of the LM head (tied or not), in place."""
    index = torch.as_tensor(list(kept_ids), dtype=torch.long)
    old_embeddings = model.get_input_embeddings()
    old_size = old_embeddings.weight.shape[0]
    if int(index.max()) >= old_size:
        raise ModelError(f"the tokenizer has ids up to {int(index.max())} but the model's embedding has {old_size} rows: use the model's own tokenizer")
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old_embeddings.weight
    remap = {old: new for new, old in enumerate(kept_ids)}
    padding_idx = remap.get(old_embeddings.padding_idx) if old_embeddings.padding_idx is not None else None
    new_embeddings = nn.Embedding(len(index), old_embeddings.embedding_dim, padding_idx=padding_idx).to(old_embeddings.weight)
    with torch.no_grad():
        new_embeddings.weight.copy_(old_embeddings.weight[index])
    model.set_input_embeddings(new_embeddings)
    if output is not None and output.weight.shape[0] == old_size:
        if tied:
            output.weight = new_embeddings.weight
        else:
            output.weight = nn.Parameter(output.weight.detach()[index].clone())
        if getattr(output, "bias", None) is not None and output.bias.shape[0] == old_size:
            output.bias = nn.Parameter(output.bias.detach()[index].clone())
        if hasattr(output, "out_features"):
            output.out_features = len(index)
    model.config.vocab_size = len(index)
    for config in (model.config, getattr(model, "generation_config", None)):
        for key in _CONFIG_TOKEN_IDS:
            value = getattr(config, key, None) if config is not None else None
            if isinstance(value, int):
                setattr(config, key, remap.get(value))


def trim_vocabulary(
    model: PreTrainedModel,
    tokenizer,
    texts: Sequence,
    config: Optional[VocabTrimConfig] = None,
    text_pairs: Optional[Sequence] = None,
    is_split_into_words: bool = False,
):
    """Trim ``model`` (in place) and ``tokenizer`` to the tokens ``texts`` use; return ``(model, new_tokenizer, report)``."""
    config = config or VocabTrimConfig()
    spec = _tokenizer_json(tokenizer)  # fail on an unsupported tokenizer before counting
    vocab_before = model.get_input_embeddings().weight.shape[0]
    params_before = model.num_parameters()
    counts = count_token_ids(tokenizer, texts, text_pairs, is_split_into_words)
    kept = select_kept_ids(tokenizer, counts, config, model.config)
    new_tokenizer = trimmed_tokenizer(tokenizer, kept)
    trim_model_embeddings(model, kept)
    corpus_ids = {i for i, n in counts.items() if n >= config.min_frequency}
    report = {
        "method": "corpus-vocabulary",
        "tokenizer_model": spec["model"]["type"],
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "vocab_size_before": vocab_before,
        "vocab_size_after": len(kept),
        "num_parameters_before": params_before,
        "num_parameters_after": model.num_parameters(),
        "corpus": {"texts": len(texts), "tokens": sum(counts.values()), "distinct_tokens": len(counts)},
        "kept_from_corpus": len(corpus_ids & set(kept)),
        "kept_otherwise": len(set(kept) - corpus_ids),
        # new id -> old id: remaps data or logits computed with the original tokenizer
        "old_ids": list(kept),
    }
    return model, new_tokenizer, report


def summarize_vocab_trim(report: dict) -> CompressionSummary:
    """The compression summary of a ``vocab_trim.json``."""
    return CompressionSummary(
        method=str(report.get("method")), title="Vocabulary trimming", applied="vocabulary-trimmed",
        summary="Tokens the training corpus never uses were removed from the tokenizer and the embedding matrix.",
        details_file=VOCAB_TRIM_FILE, settings=set_entries(report.get("config") or {}),
        results=set_entries(report, ("vocab_size_before", "vocab_size_after", "num_parameters_before", "num_parameters_after",
                                     "corpus", "kept_from_corpus", "kept_otherwise")), tags=["vocabulary-trimming"],
    )


def save_trimmed(model: PreTrainedModel, tokenizer, output_dir: str | Path, report: dict, overwrite: bool = False) -> Path:
    """Write the trimmed model, its tokenizer and ``vocab_trim.json`` with its summary atomically."""
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_method_report(tmp, report, summarize_vocab_trim(report))
    return Path(output_dir)


def corpus_texts(data, split: Optional[str] = None) -> tuple[list, Optional[list], bool]:
    """(texts, text pairs, is_split_into_words) of a :class:`~hfcompress.data.TaskData` split (default: its train split)."""
    cfg = data.cfg
    ds = data.raw[split or cfg.train_split]
    pairs = ds[cfg.text_pair_column] if cfg.text_pair_column else None
    return ds[cfg.text_column], pairs, data.task.pre_split_words


def trim_checkpoint(
    model_path: str,
    output_dir: str | Path,
    data,
    config: Optional[VocabTrimConfig] = None,
    task: Optional[str] = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    """Load ``model_path`` (directory or Hub id), trim it to the tokens of ``data``'s train split (a TaskData) and save it."""
    from ..modeling import load_checkpoint

    check_output_dir(output_dir, overwrite)
    check_free_space(output_dir, model_bytes(model_path), f"trimming {model_path}")
    model, tokenizer, _ = load_checkpoint(model_path, task, trust_remote_code)
    texts, pairs, split_words = corpus_texts(data)
    model, new_tokenizer, report = trim_vocabulary(model, tokenizer, texts, config, pairs, split_words)
    report["source"] = str(model_path)
    report["corpus"].update(dataset=data.cfg.path, split=data.cfg.train_split)
    save_trimmed(model, new_tokenizer, output_dir, report, overwrite=overwrite)
    return report


def dev_token_changes(old_tokenizer, new_tokenizer, texts: Iterable[str]) -> dict:
    """How a trimmed tokenizer encodes ``texts`` compared with the original: [UNK] share, changed sentences, length."""
    old_unk, new_unk = old_tokenizer.unk_token_id, new_tokenizer.unk_token_id
    totals = collections.Counter()
    for text in texts:
        old = old_tokenizer(text, add_special_tokens=False)["input_ids"]
        new = new_tokenizer(text, add_special_tokens=False)["input_ids"]
        totals["sentences"] += 1
        totals["old_tokens"] += len(old)
        totals["new_tokens"] += len(new)
        totals["old_unk"] += sum(i == old_unk for i in old) if old_unk is not None else 0
        totals["new_unk"] += sum(i == new_unk for i in new) if new_unk is not None else 0
        old_strings = old_tokenizer.convert_ids_to_tokens(old)
        totals["changed_sentences"] += old_strings != new_tokenizer.convert_ids_to_tokens(new)
    n = max(totals["sentences"], 1)
    return {
        "sentences": totals["sentences"],
        "unk_share_before": totals["old_unk"] / max(totals["old_tokens"], 1),
        "unk_share_after": totals["new_unk"] / max(totals["new_tokens"], 1),
        "sentences_tokenized_differently": totals["changed_sentences"] / n,
        "tokens_per_sentence_before": totals["old_tokens"] / n,
        "tokens_per_sentence_after": totals["new_tokens"] / n,
    }

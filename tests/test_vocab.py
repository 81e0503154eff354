"""Vocabulary trimming: same predictions on kept-token sentences, consistent tokenizer files, WordPiece and byte-level BPE."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from conftest import assert_compression_summary, tiny_bert_config
from hfcompress.errors import ConfigError, ModelError
from hfcompress.vocab import VocabTrimConfig, dev_token_changes, save_trimmed, trim_vocabulary, trimmed_tokenizer
from hfcompress.vocab.trim import select_kept_ids

CORPUS = [
    "the movie was a delight from start to finish",
    "a dull , lifeless and overlong film",
    "the actors seem to have fun , and so do we",
    "it is neither funny nor moving",
    "an engrossing portrait of a family in crisis",
    "the plot is predictable but the acting is superb",
]


def logits(model, tokenizer, sentences):
    with torch.no_grad():
        return model(**tokenizer(sentences, padding=True, return_tensors="pt")).logits


def all_kept(tokenizer, kept_tokens, sentence) -> bool:
    return set(tokenizer.tokenize(sentence)) <= kept_tokens


@pytest.mark.integration
def test_wordpiece_trim_keeps_predictions_and_reloads(tokenizer, sst2_path, tmp_path):
    train = [line.split("\t")[0] for line in (sst2_path / "train.tsv").read_text().splitlines()[1:201]]
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size)).eval()
    # new sentences made of training words (all tokens kept), and one of words the corpus never used
    held_out = [" ".join(reversed(train[0].split())), " ".join(train[1].split()[:4] + train[2].split()[:4]), "xylophone quizzically zebras"]
    before = logits(model, tokenizer, train[:16] + held_out)

    model, trimmed, report = trim_vocabulary(model, tokenizer, train)
    assert report["tokenizer_model"] == "WordPiece" and report["vocab_size_after"] < tokenizer.vocab_size // 4
    assert report["num_parameters_after"] < report["num_parameters_before"]
    assert len(trimmed) == model.get_input_embeddings().weight.shape[0] == model.config.vocab_size
    kept_tokens = set(trimmed.get_vocab())
    kept_sentences = [i for i, s in enumerate(train[:16] + held_out) if all_kept(tokenizer, kept_tokens, s)]
    assert kept_sentences == list(range(18))  # every training sentence and the two made of training words
    after = logits(model, trimmed, train[:16] + held_out)
    torch.testing.assert_close(after[kept_sentences], before[kept_sentences], atol=1e-5, rtol=1e-5)
    # words whose pieces were dropped fall back to shorter pieces, not [UNK]
    assert not all_kept(tokenizer, kept_tokens, held_out[2]) and trimmed.unk_token not in trimmed.tokenize(held_out[2])
    assert trimmed.decode(trimmed(held_out[2])["input_ids"], skip_special_tokens=True) == held_out[2]
    assert trimmed.convert_ids_to_tokens(trimmed("a")["input_ids"]) == ["[CLS]", "a", "[SEP]"]

    save_trimmed(model, trimmed, tmp_path / "t", report)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t").eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "t")
    assert reloaded_tokenizer.get_vocab() == trimmed.get_vocab()
    # the same tokenizer files as the original saves (transformers 4.x also writes the slow tokenizer's vocab.txt, 5 only
    # tokenizer.json), and a vocab.txt, where written, lists the trimmed vocabulary: no stale file contradicts tokenizer.json
    tokenizer.save_pretrained(tmp_path / "original")
    assert (tmp_path / "t" / "vocab.txt").exists() == (tmp_path / "original" / "vocab.txt").exists()
    if (tmp_path / "t" / "vocab.txt").exists():
        vocab_txt = (tmp_path / "t" / "vocab.txt").read_text().splitlines()
        assert vocab_txt == [t for t, _ in sorted(trimmed.get_vocab().items(), key=lambda kv: kv[1])]
    torch.testing.assert_close(logits(reloaded, reloaded_tokenizer, train[:16] + held_out), after)
    saved = json.loads((tmp_path / "t" / "vocab_trim.json").read_text())
    assert saved["vocab_size_after"] == len(saved["old_ids"]) == len(reloaded_tokenizer)
    assert assert_compression_summary(tmp_path / "t", "corpus-vocabulary").results["vocab_size_after"] == saved["vocab_size_after"]

    changes = dev_token_changes(tokenizer, trimmed, held_out)
    assert changes["unk_share_after"] == 0 and 0 < changes["sentences_tokenized_differently"] < 1


@pytest.mark.integration
def test_min_frequency_and_keep_tokens(tokenizer):
    counts_model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size))
    _, trimmed, report = trim_vocabulary(counts_model, tokenizer, CORPUS * 2 + ["zebra"], VocabTrimConfig(min_frequency=2, keep_tokens=["##ness"]))
    vocab = trimmed.get_vocab()
    assert "delight" in vocab and "zebra" not in vocab and "##ness" in vocab and "[MASK]" in vocab
    with pytest.raises(ConfigError, match="not in the tokenizer's vocabulary"):
        select_kept_ids(tokenizer, {}, VocabTrimConfig(keep_tokens=["notatoken!"]))


def byte_level_bpe_tokenizer():
    """A small GPT-2 style tokenizer trained here (no Hub access in tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(CORPUS * 3 + ["zebras quizzically juggle xylophones", "overlong overwrought overdone"], trainer)
    tok = GPT2TokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.pad_token = tok.eos_token
    return tok


def test_byte_level_bpe_trim_keeps_merges_consistent_and_the_tied_head(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_level_bpe_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})  # an added token beyond the BPE vocabulary
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    model = GPT2LMHeadModel(config).eval()
    sentences = CORPUS[:3] + ["zebras quizzically juggle xylophones"]
    before = [model(**tokenizer(s, return_tensors="pt")).logits for s in sentences]

    model, trimmed, report = trim_vocabulary(model, tokenizer, CORPUS[:3])
    assert report["tokenizer_model"] == "BPE" and report["vocab_size_after"] < len(tokenizer)
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.shape[0] == len(trimmed)
    spec = json.loads(trimmed.backend_tokenizer.to_str())["model"]
    vocab = spec["vocab"]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in spec["merges"])
    for i, s in enumerate(sentences):
        old_tokens, new_tokens = tokenizer.tokenize(s), trimmed.tokenize(s)
        if set(old_tokens) <= set(vocab):
            assert new_tokens == old_tokens
            after = model(**trimmed(s, return_tensors="pt")).logits
            # the LM head is trimmed too: compare the logits of the kept vocabulary entries
            torch.testing.assert_close(after, before[i][..., report["old_ids"]], atol=1e-5, rtol=1e-5)
        else:  # dropped merges fall back to shorter pieces of the same bytes
            assert i == 3 and trimmed.convert_tokens_to_string(new_tokens) == s
    assert model.config.eos_token_id == trimmed.eos_token_id == vocab["<|endoftext|>"]
    assert "<|extra|>" not in vocab and trimmed.convert_tokens_to_ids("<|extra|>") == len(trimmed) - 1
    assert trimmed.tokenize("a <|extra|>")[-1] == "<|extra|>"

    save_trimmed(model, trimmed, tmp_path / "g", report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "g").eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "g")
    assert reloaded_tokenizer.tokenize(sentences[0]) == trimmed.tokenize(sentences[0])
    ids = trimmed(sentences[0], return_tensors="pt")
    torch.testing.assert_close(reloaded(**ids).logits, model(**ids).logits)


def test_unsupported_tokenizers_fail_clearly():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], unk_id=0)))
    with pytest.raises(ModelError, match="supports WordPiece and BPE tokenizers; this one is Unigram"):
        trimmed_tokenizer(unigram, [0])
    with pytest.raises(ModelError, match="needs a fast tokenizer"):
        trimmed_tokenizer(object(), [0])
    with pytest.raises(ConfigError, match="min_frequency=0"):
        VocabTrimConfig(min_frequency=0)

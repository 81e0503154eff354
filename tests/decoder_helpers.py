"""Tiny random causal LMs (Llama with grouped-query attention, GPT-2) and their KV-cache exports, shared by the decoder and generation tests.

An export takes tens of seconds on 2 cores, so each (architecture, backend) is exported once per session.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.test_export import _bpe_files

_EXPORTS: dict[tuple[str, str], Path] = {}


def tiny_causal_lm(arch: str, directory: Path) -> Path:
    """A tiny random ``llama`` or ``gpt2`` with a byte-level BPE tokenizer (no pad token, as GPT-2's and Llama's), saved to ``directory``."""
    import transformers as tf

    tokenizer = tf.GPT2TokenizerFast(*_bpe_files(directory / "bpe"))
    torch.manual_seed(0)
    # a wide initialisation spreads the logits, so greedy choices are not near-ties that float noise could flip
    if arch == "llama":
        config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=96, initializer_range=0.2,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = tf.LlamaForCausalLM(config)
    else:
        config = tf.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=96, initializer_range=0.2,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = tf.GPT2LMHeadModel(config)
    out = directory / arch
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def exported(arch: str, backend: str, tmp_path_factory) -> Path:
    """The export directory of the tiny ``arch`` through ``backend`` (made once per session)."""
    from hfcompress.export import export_onnx

    if (arch, backend) not in _EXPORTS:
        root = tmp_path_factory.mktemp(f"{arch}-{backend}")
        _EXPORTS[arch, backend] = export_onnx(tiny_causal_lm(arch, root), root / "onnx", backend=backend, batch_sizes=[1, 2], sequence_lengths=[8, 40]).parent
    return _EXPORTS[arch, backend]


def contract_signature(config) -> dict:
    """The decoder-with-past layout every text-generation export has: Optimum's "text-generation-with-past", inputs in the order of the model's forward."""
    import inspect

    import transformers

    from hfcompress.export.decoder import kv_cache_shape

    kv_heads, head_dim = kv_cache_shape(config)
    layers = range(config.num_hidden_layers)
    dims = {"input_ids": ["batch_size", "sequence_length"], "attention_mask": ["batch_size", "past_sequence_length + sequence_length"],
            "position_ids": ["batch_size", "sequence_length"],
            "past_key_values": [(f"past_key_values.{i}.{kind}", ["batch_size", kv_heads, "past_sequence_length", head_dim]) for i in layers for kind in ("key", "value")]}
    inputs = []
    for name in inspect.signature(getattr(transformers, config.architectures[0]).forward).parameters:
        if name == "past_key_values":
            inputs.extend(dims[name])
        elif name in dims:
            inputs.append((name, dims[name]))
    present = [(f"present.{i}.{kind}", ["batch_size", kv_heads, "past_sequence_length + sequence_length", head_dim]) for i in layers for kind in ("key", "value")]
    return {"inputs": inputs, "outputs": [("logits", ["batch_size", "sequence_length", config.vocab_size]), *present]}

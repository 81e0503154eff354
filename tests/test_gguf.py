"""convert-gguf on a tiny Llama GGUF written here with the ``gguf`` package, as llama.cpp's converter lays one out."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hfcompress.cli import main
from hfcompress.errors import ModelError
from hfcompress.models.gguf import check_gguf_architecture, convert_gguf, supported_architectures

gguf = pytest.importorskip("gguf")

LAYER_TENSORS = {  # llama.cpp's names of a Llama block's weights
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins of the 256 bytes: a byte-level BPE vocabulary with no merges yet."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = {}, 0
    for b in range(256):
        if b in printable:
            codes[b] = chr(b)
        else:
            codes[b] = chr(256 + extra)
            extra += 1
    return [codes[b] for b in range(256)]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q and k rotated-half interleaved; transformers undoes this on load."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, architecture: str = "llama") -> LlamaForCausalLM:
    tokens = _byte_tokens() + ["he", "ll", "<|endoftext|>"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])  # normal tokens, then one control token
    writer.add_token_merges(["h e", "l l"])  # two: transformers 4.57 reads a one-element array as a scalar
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(2):
        for hf, cpp in LAYER_TENSORS.items():
            w = state[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = _permute(w, 4)
            elif hf == "self_attn.k_proj":
                w = _permute(w, 2)
            writer.add_tensor(f"blk.{i}.{cpp}.weight", w)
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def test_convert_gguf_saves_the_same_weights_and_a_working_tokenizer(tmp_path):
    original = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "converted")
    saved = load_file(out / "model.safetensors")
    assert set(original.state_dict()) - set(saved) <= {"lm_head.weight"}  # tied: saved once
    for name, value in original.state_dict().items():
        if name in saved:
            torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 2 and not hasattr(reloaded.config, "quantization_config")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()  # tied, as in the file
    ids = torch.tensor([[104, 101, 108]])
    torch.testing.assert_close(reloaded(ids).logits, original(ids).logits)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("hello", add_special_tokens=False)["input_ids"]) == "hello"


def test_cli_converts_atomically_and_refuses_an_existing_directory(tmp_path, capsys):
    write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    assert main(["convert-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 0
    assert "loading tiny.gguf (llama" in capsys.readouterr().out
    assert main(["convert-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 2
    assert "already exists: pass --overwrite" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_unsupported_architecture_is_one_line_naming_it_and_the_supported_ones(tmp_path, capsys):
    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"holds a 'rwkv6' model, which transformers cannot load from GGUF: it loads .*llama"):
        check_gguf_architecture(path)
    assert main(["convert-gguf", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rwkv6" in err
    assert not (tmp_path / "out").exists()
    assert "llama" in supported_architectures() and "tokenizer" not in supported_architectures()


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        check_gguf_architecture(path)

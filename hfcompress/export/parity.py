"""Parity of an exported ONNX model with its PyTorch original, on real sentences (or images, for image tasks).

Each check feeds the same batch to PyTorch and to ONNX Runtime and takes the largest absolute
difference over every output the two share (logits). A batch of size B at length L holds one
row of real text filling all L tokens and B-1 single sentences padded to L, so both full-length
attention and padding masks are exercised.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..artifacts import PARITY_FILE  # noqa: F401  (re-exported: callers and tests import it from here)
from ..errors import HFCompressError
from ..tasks import Task, TextInput, task_of, tokenize_inputs
from .decoder import empty_past, is_past_input


# Real sentences of different lengths and styles, used when no texts or dataset are given.
DEFAULT_PARITY_TEXTS = (
    "The film is a charming, funny and often moving portrait of a family that refuses to fall apart.",
    "Terrible.",
    "I expected very little from this sequel and was still disappointed by its lazy, recycled plot.",
    "The quarterly report shows revenue growing by 4.2 percent, mostly from the new subscription service.",
    "Please restart the router, wait thirty seconds, and then check whether the green light stays on.",
    "What a delight!",
    "Although the acting is uneven, the last twenty minutes are among the most suspenseful I have seen in years.",
    "The committee will meet on Tuesday to review the proposal and vote on the revised budget.",
    "It's not bad, but it isn't good either - just forgettable.",
    "Rain is expected across the north of the country tomorrow, with strong winds along the coast.",
    "The soundtrack, by contrast, is gorgeous.",
    "My order arrived two weeks late and the box was crushed, yet the support team never replied.",
)


class ParityError(HFCompressError):
    """An exported model whose outputs disagree with the PyTorch model beyond the tolerance."""


def parity_batch(tokenizer, texts: Sequence[TextInput], batch_size: int, length: int) -> dict[str, np.ndarray]:
    """``batch_size`` rows of exactly ``length`` tokens: one full row of running text, the others single padded inputs.

    Pairs stay pairs (both segments, as the model was trained), so token type ids are checked too.
    """
    texts = list(texts)
    if isinstance(texts[0], tuple):
        running: TextInput = (" ".join(a for a, _ in texts), " ".join(b for _, b in texts))
        while len(tokenize_inputs(tokenizer, [running])["input_ids"][0]) < length:
            running = (f"{running[0]} {running[0]}", f"{running[1]} {running[1]}")
    else:
        running = " ".join(texts)
        while len(tokenizer(running)["input_ids"]) < length:
            running = f"{running} {running}"
    rows = [running] + [texts[i % len(texts)] for i in range(batch_size - 1)]
    encoded = tokenize_inputs(tokenizer, rows, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return {name: np.asarray(value) for name, value in encoded.items()}


def check_parity(
    model,
    onnx_path: str | os.PathLike,
    tokenizer,
    texts: Optional[Sequence] = None,
    batch_sizes: Sequence[int] = (1, 4),
    sequence_lengths: Sequence[int] = (16, 128),
    atol: float = 1e-4,
    task: Optional[Task] = None,
) -> dict:
    """Compare ``model`` (PyTorch) with ``onnx_path`` (ONNX Runtime, CPU) at every batch size x input shape.

    Both get the same inputs: the graph's, made from ``texts`` (for image tasks: images, through
    ``tokenizer``, the image processor), with those a tokenizer does not give derived by ``task``
    (default: the model's). Returns ``{"max_abs_diff", "tolerance", "passed", "checks": [{"batch_size",
    "sequence_length" (text), "max_abs_diff"}]}``; lengths beyond the model's maximum are capped to it.
    """
    import onnxruntime as ort
    import torch

    task = task or task_of(model)
    texts = list(texts or task.default_inputs(tokenizer, model.config))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs() if not is_past_input(i.name)]  # a decoder's past is empty here: a prefill
    output_names = [o.name for o in session.get_outputs()]
    model.eval()
    checks = []
    for shape in task.parity_shapes(model.config, sequence_lengths):
        for batch_size in batch_sizes:
            feeds = task.onnx_feeds(task.parity_batch(tokenizer, texts, batch_size, shape), input_names)
            onnx_outputs = dict(zip(output_names, session.run(None, {**feeds, **empty_past(session.get_inputs(), batch_size)})))
            with torch.no_grad():
                torch_outputs = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            shared = [name for name in output_names if isinstance(torch_outputs.get(name), torch.Tensor)]
            if not shared:
                raise ParityError(f"the ONNX outputs {output_names} match none of the PyTorch outputs {list(torch_outputs)}")
            diff = max(float(np.abs(torch_outputs[n].float().numpy() - onnx_outputs[n]).max()) for n in shared)
            checks.append({"batch_size": batch_size, **shape, "max_abs_diff": diff})
    worst = max(checks, key=lambda c: c["max_abs_diff"])
    return {
        "onnx_file": Path(onnx_path).name,
        "max_abs_diff": worst["max_abs_diff"],
        "tolerance": atol,
        "passed": bool(worst["max_abs_diff"] <= atol),
        "checks": checks,
    }


def raise_on_mismatch(result: dict, what: str) -> None:
    if not result["passed"]:
        worst = max(result["checks"], key=lambda c: c["max_abs_diff"])
        raise ParityError(
            f"{what} disagrees with PyTorch: max abs diff {worst['max_abs_diff']:.3g} at batch {worst['batch_size']}"
            + (f", length {worst['sequence_length']}" if "sequence_length" in worst else "") + f" exceeds atol {result['tolerance']:g}; nothing was written. Try the other "
            "backend or a lower optimization level, or raise --atol if this difference is expected"
        )


def check_generation_parity(model, onnx_path: str | os.PathLike, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16) -> dict:
    """Greedy new tokens of the ONNX decoder (with its KV cache, in ONNX Runtime) against PyTorch ``generate(do_sample=False)``.

    Each prompt runs alone (batch 1), so padding cannot make the two differ; both stop at the
    generation config's eos. Returns ``{"prompts", "max_new_tokens", "passed", "first_divergence"}``,
    the divergence naming the prompt, the new token's index and both tokens (None when they agree).
    """
    from ..generation.ort import OrtCausalLM
    from ..generation.pytorch import PyTorchCausalLM

    reference = PyTorchCausalLM(model, tokenizer)
    exported = OrtCausalLM(Path(onnx_path), model.config, tokenizer, model.generation_config)
    divergence = None
    for index, prompt in enumerate(prompts):
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        expected, got = (runtime.generate(input_ids, max_new_tokens=max_new_tokens)[0, input_ids.shape[1]:].tolist() for runtime in (reference, exported))
        if expected != got:
            position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
            divergence = {"prompt": index, "text": prompt, "new_token": position, "pytorch_token": _token_at(expected, position), "onnx_token": _token_at(got, position)}
            break
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "passed": divergence is None, "first_divergence": divergence}


def _token_at(tokens: list[int], position: int) -> Optional[int]:
    return tokens[position] if position < len(tokens) else None  # None: this side had stopped at eos


def raise_on_generation_mismatch(result: dict, what: str) -> None:
    if not result["passed"]:
        d = result["first_divergence"]
        raise ParityError(
            f"{what} generates other tokens than PyTorch: greedy new token {d['new_token']} of prompt {d['prompt']} is {d['onnx_token']} "
            f"in ONNX Runtime and {d['pytorch_token']} in PyTorch; nothing was written. Try the other backend, or export in float32 without optimization"
        )

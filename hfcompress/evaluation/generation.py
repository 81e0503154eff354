"""Generative LMs measured as their users measure them: strided perplexity, prefill and decode tokens/s,
time to first token, peak RSS and size on disk.

Every figure goes through the generation runtime protocol (``hfcompress.generation.load_causal_lm``:
``logits()`` for perplexity, ``generate()`` for speed), so PyTorch, ONNX Runtime, onnxruntime-genai and
llama.cpp (:mod:`.llamacpp`) are measured by the same code.

- **Perplexity** follows transformers' perplexity guide: the whole text is tokenized once, windows of
  ``context`` tokens move by ``stride``; with ``stride == context`` they do not overlap, with a smaller
  stride each window scores only its last ``stride`` tokens and reads the rest as context.
- **Speed** at batch 1 on a real-text prompt, from greedy ``generate`` runs of ``new_tokens`` tokens
  (end of sequence ignored, so every run makes exactly that many) timed token by token through a
  streamer: time to first token is when the first new token arrives; prefill tokens/s is the prompt
  length over it; decode tokens/s is the ``new_tokens - 1`` tokens after the first over the time
  they took. Each is the median of ``repeats`` runs after ``warmup`` ones.
- **Peak RSS** is measured by :func:`measure_in_subprocess`: each variant loads in a fresh process, so
  none inherits another's memory; it includes the Python interpreter and the runtime's libraries.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, ModelError
from .footprint import onnx_files_of
from .latency import cpu_info

DEFAULT_LOADER = "hfcompress.generation:load_causal_lm"
# an end-of-sequence id no token has: generation runs to max_new_tokens, as llama-bench's tg runs do
NO_EOS = -1


class CausalLM(Protocol):
    """What the measurements need of a runtime (the generation protocol of issue 21)."""

    tokenizer: object

    def logits(self, input_ids, attention_mask=None): ...

    def generate(self, input_ids, attention_mask=None, *, max_new_tokens: int, do_sample: bool = False, eos_token_id=None, **kwargs): ...


@dataclass(frozen=True)
class GenerationSettings:
    """The measurement protocol; stated with every result."""

    context: int = 512
    stride: int = 512
    max_tokens: Optional[int] = 8192  # evaluate the first N tokens of the text (None: all)
    prompt_tokens: int = 512
    new_tokens: int = 128
    warmup: int = 1
    repeats: int = 3
    threads: int = 2

    def __post_init__(self):
        if self.context < 2 or not 1 <= self.stride <= self.context:
            raise ConfigError(f"perplexity needs context >= 2 and 1 <= stride <= context (got context {self.context}, stride {self.stride})")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError(f"max_tokens must be at least 2 to score a token (got {self.max_tokens}), or None for the whole text")
        if self.prompt_tokens < 2 or self.new_tokens < 2 or self.repeats < 1 or self.warmup < 0 or self.threads < 1:
            raise ConfigError("prompt_tokens and new_tokens must be >= 2, repeats and threads >= 1 and warmup >= 0")


@dataclass(frozen=True)
class Window:
    """Tokens ``[begin, end)`` go through the model; the targets ``[first, end)`` are scored."""

    begin: int
    end: int
    first: int


def perplexity_windows(num_tokens: int, context: int, stride: int) -> list[Window]:
    """The windows of transformers' strided perplexity over ``num_tokens`` tokens.

    Each target is scored once, by the window that gives it the most context; the first token of the
    text has no prediction. Windows that would score nothing are left out.
    """
    windows, previous_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + context, num_tokens)
        first = max(previous_end, begin + 1)
        if first < end:
            windows.append(Window(begin, end, first))
        previous_end = end
        if end == num_tokens:
            break
    return windows


def perplexity(logits_fn: Callable, token_ids: Sequence[int], context: int = 512, stride: int = 512, desc: str = "Perplexity") -> dict:
    """Perplexity of a causal LM over ``token_ids`` with :func:`perplexity_windows`.

    ``logits_fn(input_ids)`` takes a LongTensor [1, length] and returns logits [1, length, vocab].
    Returns the mean negative log-likelihood (``loss``, nats per token), ``perplexity``, the number of
    ``tokens_scored`` and of ``windows``, and the ``context`` and ``stride``.
    """
    import torch

    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(ids) < 2:
        raise DataError(f"the text has {len(ids)} token(s): perplexity needs at least 2")
    windows = perplexity_windows(len(ids), context, stride)
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for w in tqdm(windows, desc=desc, leave=False):
            logits = torch.as_tensor(logits_fn(ids[w.begin : w.end].unsqueeze(0)))[0]
            # the logits at position t predict token t + 1
            predictions = logits[w.first - w.begin - 1 : w.end - w.begin - 1].float()
            nll += float(torch.nn.functional.cross_entropy(predictions, ids[w.first : w.end], reduction="sum"))
            scored += w.end - w.first
    loss = nll / scored
    return {
        "loss": round(loss, 6),
        "perplexity": round(math.exp(loss), 4),
        "tokens_scored": scored,
        "windows": len(windows),
        "context": context,
        "stride": stride,
    }


def encode_text(lm: CausalLM, text: str) -> list[int]:
    """The text's token ids with the model's tokenizer, no special tokens added (as a raw corpus is scored)."""
    return list(lm.tokenizer.encode(text, add_special_tokens=False))


class TokenClock:
    """A generation streamer that notes when each new token arrives.

    transformers' ``generate`` (and the runtimes that follow it) puts the prompt first: a first put
    of the prompt's length is the prompt, not new tokens.
    """

    def __init__(self, prompt_length: int):
        self.prompt_length, self.times, self._first = prompt_length, [], True

    def put(self, value) -> None:
        import torch

        now, count = time.perf_counter(), int(torch.as_tensor(value).numel())
        if not (self._first and count == self.prompt_length):
            self.times += [now] * count
        self._first = False

    def end(self) -> None:
        pass


def generation_speed(lm: CausalLM, prompt_ids: Sequence[int], new_tokens: int = 128, warmup: int = 1, repeats: int = 3) -> dict:
    """Time to first token, prefill and decode tokens/s of greedy generation at batch 1 (see the module docstring).

    Each run is one ``generate`` of ``new_tokens`` tokens timed token by token through a streamer.
    """
    import torch

    prompt = torch.as_tensor([list(prompt_ids)], dtype=torch.long)
    mask = torch.ones_like(prompt)

    def run() -> tuple[float, float]:
        clock = TokenClock(prompt.shape[-1])
        start = time.perf_counter()
        out = lm.generate(prompt, mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=NO_EOS, streamer=clock)
        made = out.shape[-1] - prompt.shape[-1]
        if made != new_tokens:
            raise ModelError(f"generate made {made} new tokens, not {new_tokens}: the runtime must ignore an eos_token_id that no token has")
        if len(clock.times) != new_tokens:
            raise ModelError(f"the runtime streamed {len(clock.times)} of its {new_tokens} new tokens: it must put each token to the streamer")
        return clock.times[0] - start, (new_tokens - 1) / max(clock.times[-1] - clock.times[0], 1e-9)

    with torch.inference_mode():
        for _ in range(warmup):
            run()
        ttfts, decodes = zip(*(run() for _ in tqdm(range(repeats), desc="Timing generation", leave=False)))
    ttft = statistics.median(ttfts)
    return {
        "ttft_ms": round(ttft * 1e3, 3),
        "prefill_tokens_per_s": round(len(prompt_ids) / ttft, 2),
        "decode_tokens_per_s": round(statistics.median(decodes), 2),
        "prompt_tokens": len(prompt_ids),
        "new_tokens": new_tokens,
        "repeats": repeats,
    }


def evaluate_generation(lm: CausalLM, text: str, settings: GenerationSettings = GenerationSettings()) -> dict:
    """Perplexity (with its protocol) and speed of ``lm`` on ``text``, tokenized once by ``lm``'s tokenizer.

    The prompt for the speed figures is the first ``prompt_tokens`` tokens of the text.
    """
    ids = encode_text(lm, text)
    total, digest = len(ids), hashlib.sha256(" ".join(map(str, ids)).encode()).hexdigest()
    if settings.max_tokens is not None:
        ids = ids[: settings.max_tokens]
    if len(ids) < settings.prompt_tokens:
        raise DataError(f"the text has {len(ids)} tokens, fewer than the {settings.prompt_tokens}-token prompt: give a longer text or lower prompt_tokens")
    result = perplexity(lm.logits, ids, settings.context, settings.stride)
    result["text_tokens"] = total
    result["tokens_sha256"] = digest  # runtimes with different tokenizers score different windows: this tells
    result["max_tokens"] = settings.max_tokens
    result.update(generation_speed(lm, ids[: settings.prompt_tokens], settings.new_tokens, settings.warmup, settings.repeats))
    return result


def perplexity_protocol(result: dict) -> str:
    """One line that states how a perplexity was measured."""
    moving = "non-overlapping" if result["stride"] == result["context"] else f"moving by {result['stride']}, each scoring only its new tokens"
    total = result["text_tokens"]
    evaluated = total if result["max_tokens"] is None else min(result["max_tokens"], total)
    return (f"{result['tokens_scored']:,} tokens scored in {result['windows']} windows of {result['context']} tokens ({moving}), "
            f"over the first {evaluated:,} of the text's {total:,} tokens")


# --- one variant per process -----------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationVariant:
    """A model to measure: its ``path`` and the ``loader`` (``module:function``) that opens it as a :class:`CausalLM`.

    ``size_path`` is what is counted on disk (default ``path``: a GGUF file, a checkpoint's weights,
    or a directory's ONNX files with their external data).
    """

    name: str
    path: str
    loader: str = DEFAULT_LOADER
    loader_kwargs: dict = field(default_factory=dict)
    size_path: Optional[str] = None


def load_variant(variant: GenerationVariant, threads: int) -> CausalLM:
    """Call the variant's loader with the thread count under the name it takes (``threads``: llama.cpp; ``intra_op_num_threads``:
    hfcompress.generation's runtimes, ONNX Runtime's name); a missing runtime is a ModelError naming it."""
    module_name, _, function = variant.loader.partition(":")
    try:
        loader = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"variant '{variant.name}' needs {variant.loader}, which this installation lacks ({e})") from e
    kwargs = dict(variant.loader_kwargs)
    parameters = inspect.signature(loader).parameters
    if "threads" in parameters:
        kwargs.setdefault("threads", threads)
    elif "intra_op_num_threads" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs.setdefault("intra_op_num_threads", threads)  # the PyTorch runtime ignores it: torch's threads are set for the process
    return loader(variant.path, **kwargs)


def size_on_disk_mb(path: str | Path) -> float:
    """MB (10^6 bytes) of what a variant needs on disk: a file, a directory's ONNX files with their data, else its weight files."""
    from ..utils.hashing import weight_files

    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = [f for onnx in sorted(path.glob("*.onnx")) for f in onnx_files_of(onnx)] or weight_files(path)
    if not files:
        raise ModelError(f"'{path}' holds no model files (.onnx, .safetensors, .bin, .gguf): give the variant's directory or file")
    return round(sum(f.stat().st_size for f in set(files)) / 1e6, 3)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    On Linux the high-water mark of this process's own memory map (VmHWM): ``ru_maxrss`` would carry the parent's
    peak across fork and exec, so every variant spawned by a large benchmark process would report at least its size.
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1.024 / 1000, 1)  # kB -> MB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3 / 1.024), 1)


def measure_variant(variant: GenerationVariant, text: str, settings: GenerationSettings) -> dict:
    """Load and measure one variant in this process: perplexity, speed, size, peak RSS (this process's), load time."""
    import torch

    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    lm = load_variant(variant, settings.threads)
    load_s = time.perf_counter() - start
    result = {"name": variant.name, **evaluate_generation(lm, text, settings)}
    result["perplexity_protocol"] = perplexity_protocol(result)
    result["size_mb"] = size_on_disk_mb(variant.size_path or variant.path)
    result["load_s"] = round(load_s, 2)
    result["peak_rss_mb"] = peak_rss_mb()
    result["hardware"] = cpu_info(settings.threads)
    return result


def measure_in_subprocess(variant: GenerationVariant, text: str, settings: GenerationSettings) -> dict:
    """:func:`measure_variant` in a fresh (spawned) process, so that its peak RSS is the variant's alone."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure_variant, variant, text, settings).result()

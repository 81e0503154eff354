"""What ``hfcompress serve`` runs with: the server, the dynamic batcher and the limits on requests.

Every field has its help text in its metadata; the ``serve`` command's options are generated from
them, so the command line and the Python API cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError

LONG_INPUT_POLICIES = ("truncate", "reject")
TGI_DEFAULT_NEW_TOKENS = 100
BACKENDS = ("auto", "pytorch", "onnx")


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ServeConfig:
    """Server, batching and request limits of ``hfcompress serve`` (validated when built)."""

    host: str = _help("Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).", default="127.0.0.1")
    port: int = _help("TCP port to listen on (0: any free port).", default=8000)
    workers: int = _help("Server processes, each with its own copy of the model and its own batcher.", default=1)
    threads: Optional[int] = _help("Intra-op threads of each worker's ONNX Runtime session or torch (default: the runtime's choice).", default=None)
    backend: str = _help("Runtime: onnx (the directory's .onnx file), pytorch (safetensors weights), or auto: onnx when there is one.", default="auto")
    onnx_file: Optional[str] = _help("ONNX file in the model directory (default model.onnx), e.g. model_quantized.onnx.", default=None)
    # Defaults from loopback measurements on 2 CPU cores: ONNX Runtime's throughput peaked at batch 8 for both a tiny BERT and the
    # 3-layer SST-2 student (larger batches pad more than they save), and a 1 ms window lets batches fill at moderate
    # concurrency. A lone request never waits, and inputs that queue while a batch runs join the next one anyway.
    max_batch_size: int = _help("Most inputs run together in one padded batch.", default=8)
    max_wait_ms: float = _help("How long a batch waits for requests still arriving to join it (a lone request runs at once; 0: never wait).", default=1.0)
    max_queue: int = _help("Most inputs waiting for the model; beyond it requests get 503 with Retry-After.", default=256)
    max_body_bytes: int = _help("Largest request body in bytes (413 beyond it, refused before it is read in full).", default=1_000_000)
    max_items: int = _help("Most inputs in one request.", default=64)
    max_input_chars: int = _help("Longest input text in characters (a pair counts both texts); longer ones get 413.", default=20_000)
    max_length: Optional[int] = _help("Longest input in tokens (default: what the model's position embeddings allow, at most 512).", default=None)
    long_input: str = _help("Inputs longer than max_length tokens: truncate them, or reject the request with 413.", default="truncate")
    # text generation (causal LMs): each generation runs in its own thread, so the limit bounds the threads sharing the cores
    max_new_tokens: int = _help("Text generation: most new tokens one request may ask for (more is answered 422).", default=512)
    default_max_new_tokens: Optional[int] = _help(
        f"Text generation: new tokens when a request does not say (default: {TGI_DEFAULT_NEW_TOKENS} as TGI, or max_new_tokens if lower).", default=None)
    max_concurrent_generations: int = _help("Text generation: generations running at once; beyond it requests get 503 with Retry-After.", default=4)
    generation_timeout_s: float = _help("Text generation: longest one generation may run; it is then stopped (504, or an error event when streaming).", default=120.0)
    graceful_timeout_s: float = _help("On shutdown, how long in-flight requests may take to finish.", default=30.0)
    # off by default: a log line per request costs the event loop time a small model's request does not have (see the README's numbers)
    access_log: bool = _help("Log every request (uvicorn's access log); /metrics counts them either way.", default=False)

    def __post_init__(self):
        positive = ("workers", "max_batch_size", "max_queue", "max_body_bytes", "max_items", "max_input_chars", "max_new_tokens",
                    "max_concurrent_generations")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serve {name} must be a positive integer, got {value!r}")
        for name in ("threads", "max_length", "default_max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"serve {name} must be a positive integer or unset, got {value!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"serve port must be between 0 and 65535, got {self.port!r}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"serve max_wait_ms must be between 0 and 1000 ms, got {self.max_wait_ms!r}")
        if not isinstance(self.access_log, bool):
            raise ConfigError(f"serve access_log must be true or false, got {self.access_log!r}")
        if self.graceful_timeout_s < 0:
            raise ConfigError(f"serve graceful_timeout_s must not be negative, got {self.graceful_timeout_s!r}")
        if not self.generation_timeout_s > 0:
            raise ConfigError(f"serve generation_timeout_s must be positive, got {self.generation_timeout_s!r}")
        if self.default_max_new_tokens is not None and self.default_max_new_tokens > self.max_new_tokens:
            raise ConfigError(f"serve default_max_new_tokens ({self.default_max_new_tokens}) is above max_new_tokens ({self.max_new_tokens}): lower it")
        if self.long_input not in LONG_INPUT_POLICIES:
            raise ConfigError(f"serve long_input '{self.long_input}' is not one of {LONG_INPUT_POLICIES}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"serve backend '{self.backend}' is not one of {BACKENDS}")
        if self.max_queue < self.max_items:
            raise ConfigError(f"serve max_queue ({self.max_queue}) is below max_items ({self.max_items}): a full request could never be queued; raise max_queue")

    @property
    def new_tokens_default(self) -> int:
        """New tokens of a generation request that does not say."""
        return self.default_max_new_tokens or min(TGI_DEFAULT_NEW_TOKENS, self.max_new_tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ServeConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown serve settings {unknown}: use {sorted(names)}")
        return cls(**values)

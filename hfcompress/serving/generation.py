"""Text generation behind the server: Text Generation Inference's API, tokens streamed as they are produced.

A causal LM loads through the generation protocol (:func:`hfcompress.generation.load_causal_lm`:
a PyTorch checkpoint, or an ONNX export with a KV cache). Each generation runs in a worker thread
of its own; its streamer turns every new token into an event on an asyncio queue, which the
request's handler reads: ``POST /generate`` collects them into one answer, ``POST /generate_stream``
sends each as a server-sent event. At most ``max_concurrent_generations`` run at once (503 with
Retry-After beyond it); a generation stops when its client goes away, when a stop sequence appears,
or after ``generation_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Optional

from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, Strict
from transformers.generation.streamers import BaseStreamer

from ..errors import DataError
from ..tasks import Task
from .batching import QueueFull
from .config import ServeConfig
from .predictor import InputTooLong, describe_model, input_chars, refuse_pickle, set_torch_threads

logger = logging.getLogger("hfcompress.serve")

MAX_STOP_SEQUENCES = 4  # as TGI
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

StrictFloat = Annotated[float, Strict()]  # a number (an int too), never a string
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]


class GenerateParameters(BaseModel):
    """The parameters of TGI's ``/generate`` this server honours (None: the model's generation config, or the server's default)."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: Optional[StrictInt] = Field(None, description="Most tokens to generate (default: the server's default_max_new_tokens, "
                                                "or fewer when the model's positions hold no more).")
    do_sample: Optional[StrictBool] = Field(None, description="Sample instead of greedy decoding.")
    temperature: Optional[StrictFloat] = Field(None, description="Sampling temperature (> 0).")
    top_k: Optional[StrictInt] = Field(None, description="Sample among the k likeliest tokens (0: all).")
    top_p: Optional[StrictFloat] = Field(None, description="Sample among the likeliest tokens holding this probability mass, in (0, 1].")
    seed: Optional[StrictInt] = Field(None, description="Random seed of the sampling (default: a fresh one, reported in details).")
    stop: list[Annotated[str, Strict()]] = Field(default_factory=list, description=f"Stop once the text holds one of these (at most {MAX_STOP_SEQUENCES}).")
    return_full_text: Optional[StrictBool] = Field(None, description="Prepend the prompt to the generated text.")
    details: Optional[StrictBool] = Field(None, description="Return the finish reason, token count and seed.")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 20}},
        {"inputs": "Once upon a time", "parameters": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "seed": 0, "details": True}},
    ]})
    inputs: Any = Field(..., description="The prompt.")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class CompatGenerateRequest(GenerateRequest):
    stream: Optional[StrictBool] = Field(None, description="Answer with server-sent events, one per token.")


@dataclass
class GenerationJob:
    """One checked request: the prompt's token ids and the settings it runs with."""

    prompt: str
    input_ids: Any  # torch.LongTensor [1, prompt tokens]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    seed: Optional[int]
    stop: list[str]
    return_full_text: bool
    cancelled: threading.Event = field(default_factory=threading.Event)


class GenerationStopped(Exception):
    """Raised inside the generation (from the streamer) to end it early: a stop sequence, a client gone, a timeout."""


class GenerationTimeout(Exception):
    """The generation ran past the server's generation_timeout_s."""


class GenerationMetrics:
    """Prometheus metrics of text generation, in the server's registry."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        self.tokens = Counter("hfcompress_generated_tokens", "Tokens generated.", registry=registry)
        self.finished = Counter("hfcompress_generations", "Generations by how they ended.", ["finish_reason"], registry=registry)
        self.time_to_first_token = Histogram("hfcompress_time_to_first_token_seconds", "From a generation's start to its first new token.",
                                             registry=registry)
        self.tokens_per_second = Histogram("hfcompress_generation_tokens_per_second", "Decode speed of each generation, after its first token.",
                                           buckets=TOKENS_PER_SECOND_BUCKETS, registry=registry)
        self.running = Gauge("hfcompress_generations_running", "Generations running now.", registry=registry, multiprocess_mode="livesum")


class TokenStream(BaseStreamer):
    """A transformers streamer (``put``/``end``) that turns each new token into an event for the event loop.

    Runs in the generation's thread. A first ``put`` of the prompt (as transformers' ``generate``
    feeds it) is skipped. Each token's text is what it adds to the decoded generation, so that
    the texts of the non-special tokens add up to the generated text. The token that ends the
    generation (end of sequence, a stop sequence, the last one asked for) carries the whole text and
    details, as TGI's last event does. ``put`` raises :class:`GenerationStopped` once the job is
    cancelled or a stop sequence appeared, which ends the generation at once.
    """

    def __init__(self, tokenizer, job: GenerationJob, eos_token_ids: set[int], emit, metrics: GenerationMetrics):
        self.tokenizer, self.job, self.eos_token_ids, self.emit, self.metrics = tokenizer, job, eos_token_ids, emit, metrics
        self.special_ids = set(tokenizer.all_special_ids)
        self.ids: list[int] = []
        self.text = ""
        self.prompt_seen = self.ended = False
        self.final: Optional[dict] = None  # generated_text and details, once the last token is known
        self.seed: Optional[int] = None
        self.started = time.perf_counter()
        self.first_token_at: Optional[float] = None

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            if value.reshape(-1).tolist() == self.job.input_ids.reshape(-1).tolist():
                return  # the prompt, which transformers' generate puts first (a runtime that does not is served as well)
        if self.job.cancelled.is_set():
            raise GenerationStopped("cancelled")
        for token_id in value.reshape(-1).tolist():
            self._add(int(token_id))
        if self.final is not None and self.final["details"]["finish_reason"] == "stop_sequence":
            raise GenerationStopped("stop sequence")

    def _add(self, token_id: int) -> None:
        if self.final is not None:
            return  # past a stop sequence within one put
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.metrics.time_to_first_token.observe(self.first_token_at - self.started)
        self.ids.append(token_id)
        self.metrics.tokens.inc()
        special = token_id in self.special_ids
        decoded = self.text if special else self.tokenizer.decode(self.ids, skip_special_tokens=True)
        reason = ("eos_token" if token_id in self.eos_token_ids else "stop_sequence" if any(s in decoded for s in self.job.stop)
                  else "length" if len(self.ids) >= self.job.max_new_tokens else None)
        if special:
            text = self.tokenizer.decode([token_id])
        else:
            # a token that ends inside a character adds nothing yet (the next one adds the whole character), unless it is the last
            text = "" if decoded.endswith("\ufffd") and reason is None else decoded[len(self.text):]
            self.text += text
        if reason is not None:
            self.final = self.finish(reason)
        token = {"id": token_id, "text": text, "logprob": None, "special": special}
        self.emit(("token", {"index": len(self.ids), "token": token, "generated_text": None, "details": None, **(self.final or {})}))

    def finish(self, reason: str) -> dict:
        """The whole generated text (the prompt first if asked) and TGI's details."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        details = {"finish_reason": reason, "generated_tokens": len(self.ids), "input_length": int(self.job.input_ids.shape[1]), "seed": self.seed}
        return {"generated_text": self.job.prompt + text if self.job.return_full_text else text, "details": details}

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.first_token_at is not None and len(self.ids) > 1:
            self.metrics.tokens_per_second.observe((len(self.ids) - 1) / max(time.perf_counter() - self.first_token_at, 1e-9))


class GenerationPredictor:
    """A causal LM in the generation protocol, checking requests and running generations."""

    def __init__(self, lm, task: Task, backend: str, model_path: str, config: ServeConfig):
        self.lm, self.task, self.backend, self.model_path, self.config = lm, task, backend, model_path, config
        self.tokenizer, self.model_config, self.generation_config = lm.tokenizer, lm.config, lm.generation_config
        self.max_positions = getattr(self.model_config, "max_position_embeddings", None) or getattr(self.model_config, "n_positions", None)
        self.eos_token_ids = self._eos_token_ids()
        self._tokenizer_lock = threading.Lock()  # fast tokenizers refuse concurrent encoding ("Already borrowed")
        self._sampling_lock = threading.Lock()  # sampling draws from the global RNG: one seeded generation at a time stays reproducible

    def _eos_token_ids(self) -> set[int]:
        eos = self.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])

    def defaults(self) -> dict:
        """The settings a request gets for the parameters it leaves out: the model's generation config, the server's token default."""
        g = self.generation_config
        return {
            "max_new_tokens": self.config.new_tokens_default, "do_sample": bool(g.do_sample), "temperature": g.temperature or 1.0,
            "top_k": g.top_k or 0, "top_p": g.top_p or 1.0,
        }

    def prepare(self, inputs, parameters: GenerateParameters, return_full_text: bool) -> GenerationJob:
        """The job for a request's prompt and parameters; DataError (InputTooLong for length) naming what to change."""
        if not isinstance(inputs, str):
            raise DataError(f"'inputs' must be the prompt as a string, got {type(inputs).__name__}: send one prompt per request")
        if not inputs.strip():
            raise DataError("'inputs' is empty: send a prompt with at least one non-space character")
        if input_chars(inputs) > self.config.max_input_chars:
            raise InputTooLong(f"the prompt has {len(inputs)} characters: send at most {self.config.max_input_chars} (the server's max_input_chars)")
        settings = {**self.defaults(), **parameters.model_dump(exclude_none=True, include=set(self.defaults()))}
        self._check(settings, parameters)
        with self._tokenizer_lock:
            input_ids = self.tokenizer(inputs, return_tensors="pt")["input_ids"]
        if self.max_positions and parameters.max_new_tokens is None:  # as TGI: a request that does not say gets what fits
            settings["max_new_tokens"] = max(1, min(settings["max_new_tokens"], self.max_positions - input_ids.shape[1]))
        total = input_ids.shape[1] + settings["max_new_tokens"]
        if self.max_positions and total > self.max_positions:
            raise InputTooLong(
                f"the prompt has {input_ids.shape[1]} tokens and max_new_tokens is {settings['max_new_tokens']}: together at most "
                f"{self.max_positions} (the model's positions); shorten the prompt or ask for fewer new tokens"
            )
        full_text = parameters.return_full_text if parameters.return_full_text is not None else return_full_text
        return GenerationJob(inputs, input_ids, seed=parameters.seed, stop=parameters.stop, return_full_text=full_text, **settings)

    def _check(self, settings: dict, parameters: GenerateParameters) -> None:
        limit = self.config.max_new_tokens
        if not 1 <= settings["max_new_tokens"] <= limit:
            raise DataError(f"max_new_tokens is {settings['max_new_tokens']}: ask for 1 to {limit} (the server's max_new_tokens)")
        if settings["do_sample"] and settings["temperature"] <= 0:
            raise DataError(f"temperature is {settings['temperature']} with do_sample: give a positive temperature, or do_sample=false for greedy decoding")
        if not 0 < settings["top_p"] <= 1:
            raise DataError(f"top_p is {settings['top_p']}: give a value in (0, 1] (1: no nucleus filter)")
        if settings["top_k"] < 0:
            raise DataError(f"top_k is {settings['top_k']}: give 0 (no top-k filter) or a positive number of tokens")
        if parameters.seed is not None and parameters.seed < 0:
            raise DataError(f"seed is {parameters.seed}: give a non-negative integer")
        if len(parameters.stop) > MAX_STOP_SEQUENCES or not all(parameters.stop):
            raise DataError(f"stop has {len(parameters.stop)} sequences: give at most {MAX_STOP_SEQUENCES}, none of them empty")

    def generate(self, job: GenerationJob, stream: TokenStream) -> Optional[dict]:
        """Run ``job`` to its end in this (worker) thread, streaming its tokens.

        Returns the generated text and details when no token carried them (the runtime stopped on
        its own), else None; raises GenerationStopped when the job was cancelled.
        """
        import torch

        settings = dict(max_new_tokens=job.max_new_tokens, do_sample=job.do_sample, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p)
        with self._sampling_lock if job.do_sample else contextlib.nullcontext():
            if job.do_sample:
                from transformers import set_seed

                stream.seed = job.seed if job.seed is not None else random.randrange(2**32)
                set_seed(stream.seed)
            try:
                self.lm.generate(job.input_ids, attention_mask=torch.ones_like(job.input_ids), eos_token_id=sorted(self.eos_token_ids) or None, streamer=stream, **settings)
            except GenerationStopped:
                if stream.final is None:
                    raise  # cancelled: nobody waits for an answer
            finally:
                stream.end()
        return None if stream.final is not None else stream.finish("length")

    def metadata(self) -> dict:
        return {
            **describe_model(self.model_path, self.task, self.backend),
            "max_positions": self.max_positions,
            "generation": {"defaults": self.defaults(), "max_new_tokens": self.config.max_new_tokens,
                           "max_concurrent_generations": self.config.max_concurrent_generations, "eos_token_ids": sorted(self.eos_token_ids)},
        }


# the server's --backend names and the generation protocol's
PROTOCOL_BACKENDS = {"auto": "auto", "pytorch": "pytorch", "onnx": "onnxruntime"}


def load_generation_predictor(model_path: str, task: Task, config: ServeConfig, local: Optional[Path]) -> GenerationPredictor:
    """The causal LM at ``model_path`` (a safetensors checkpoint, an ONNX export with a KV cache, or a Hub id), warmed up."""
    from ..errors import ConfigError
    from ..generation import detect_backend, load_causal_lm

    if config.onnx_file is not None:
        raise ConfigError(f"onnx_file={config.onnx_file!r} does not apply to a causal LM: its export directory holds one decoder graph")
    if local is not None and not any(local.glob("*.onnx")):
        refuse_pickle(local)
    set_torch_threads(config.threads)
    backend = PROTOCOL_BACKENDS[config.backend]
    backend = detect_backend(model_path) if backend == "auto" else backend
    lm = load_causal_lm(model_path, backend=backend, intra_op_num_threads=config.threads)
    predictor = GenerationPredictor(lm, task, backend, model_path, config)
    # the first run allocates; a model that cannot generate fails here, at start-up
    job = predictor.prepare("warm-up", GenerateParameters(max_new_tokens=1, do_sample=False), return_full_text=False)
    predictor.generate(job, TokenStream(predictor.tokenizer, job, predictor.eos_token_ids, lambda event: None, GenerationMetrics(None)))
    return predictor


class GenerationSlots:
    """At most ``max_concurrent_generations`` generations at once, each in a worker thread; :meth:`launch` refuses more."""

    def __init__(self, predictor: GenerationPredictor, metrics: GenerationMetrics):
        self.predictor, self.metrics = predictor, metrics
        self.limit = predictor.config.max_concurrent_generations
        self.running = 0
        self._executor: Optional[ThreadPoolExecutor] = None
        self._closing = False
        self._seconds = 5.0  # running estimate of one generation's time, for Retry-After

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="hfcompress-generation")

    async def stop(self) -> None:
        """Refuse new generations and wait for the running ones (uvicorn has already let their requests end)."""
        self._closing = True
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
            self._executor = None

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self._seconds))

    def launch(self, job: GenerationJob) -> "Generation":
        """Start ``job`` in a free slot; QueueFull when none is free or the server is shutting down."""
        if self._closing or self._executor is None:
            raise QueueFull("the server is shutting down: retry on another replica", self.retry_after_s())
        if self.running >= self.limit:
            raise QueueFull(f"all {self.limit} generation slots are busy (the server's max_concurrent_generations): retry later", self.retry_after_s())
        loop = asyncio.get_running_loop()
        generation = Generation(job, asyncio.Queue())
        stream = TokenStream(self.predictor.tokenizer, job, self.predictor.eos_token_ids,
                             lambda event: loop.call_soon_threadsafe(generation.events.put_nowait, event), self.metrics)
        self.running += 1
        self.metrics.running.inc()
        started = time.perf_counter()

        def run() -> None:
            try:
                final = self.predictor.generate(job, stream)
                self.metrics.finished.labels((final or stream.final)["details"]["finish_reason"]).inc()
                event = ("end", final)
            except GenerationStopped:
                self.metrics.finished.labels("timeout" if generation.timed_out else "cancelled").inc()
                event = ("end", None)
            except Exception as error:  # noqa: BLE001 - this generation fails; the server keeps serving
                self.metrics.finished.labels("error").inc()
                event = ("error", error)
            loop.call_soon_threadsafe(self._finished, generation, event, time.perf_counter() - started)

        self._executor.submit(run)
        return generation

    def _finished(self, generation: "Generation", event, seconds: float) -> None:
        self.running -= 1
        self.metrics.running.dec()
        self._seconds = 0.8 * self._seconds + 0.2 * seconds
        generation.events.put_nowait(event)


@dataclass
class Generation:
    """A running generation, as its request's handler sees it: events to read, and a way to stop it."""

    job: GenerationJob
    events: asyncio.Queue
    timed_out: bool = False

    async def tokens(self, request, timeout_s: float) -> AsyncIterator[tuple[str, Any]]:
        """``("token", token)`` events, then ``("end", final)``; stops the generation when the client goes away.

        Raises GenerationTimeout after ``timeout_s``, and the model's error if it failed.
        """
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(self.events.get(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    self.timed_out = True
                    raise GenerationTimeout(f"the generation ran past {timeout_s:g} s (the server's generation_timeout_s): ask for fewer new tokens") from None
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "end":
                    return
                if await request.is_disconnected():
                    return
        finally:
            self.job.cancelled.set()  # a no-op once it has ended; otherwise its next token stops it


def server_sent_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def add_generation_routes(app, predictor: GenerationPredictor, slots: GenerationSlots, config: ServeConfig) -> None:
    """``POST /generate`` and ``/generate_stream`` (TGI's API) and ``/predict`` (the pipeline's ``[{"generated_text": ...}]``)."""
    from .app import error_response, model_failure, refusal, require_json

    def launch(body: GenerateRequest, return_full_text: bool):
        """The started generation, or the 4xx/503 answer why it cannot start."""
        try:
            return slots.launch(predictor.prepare(body.inputs, body.parameters, return_full_text))
        except (DataError, QueueFull) as e:
            return refusal(e)

    async def answer(body: GenerateRequest, request: Request, return_full_text: bool):
        """The whole generation as one answer ({generated_text, details}), or the error response."""
        generation = launch(body, return_full_text)
        if not isinstance(generation, Generation):
            return generation
        result = None
        try:
            async for kind, payload in generation.tokens(request, config.generation_timeout_s):
                result = payload if kind == "token" else payload or result
        except GenerationTimeout as e:
            return error_response(504, str(e))
        except Exception as e:  # noqa: BLE001 - the model failed: this request gets 500, the server keeps serving
            logger.exception("generation failed")
            return error_response(500, model_failure(e))
        if result is None or result["generated_text"] is None:
            return Response(status_code=499)  # the client went away (nginx's code): nobody reads this
        return {"generated_text": result["generated_text"], "details": result["details"]}

    errors = {
        413: {"description": "Prompt (or prompt + max_new_tokens) over the limits."}, 415: {"description": "Not application/json."},
        422: {"description": "Wrong shape or a parameter out of range."}, 503: {"description": "All generation slots busy; retry after Retry-After seconds."},
        504: {"description": "The generation ran past generation_timeout_s."},
    }

    async def generate(body: GenerateRequest, request: Request, return_full_text: bool):
        result = await answer(body, request, return_full_text)
        if not isinstance(result, dict):
            return result
        return result if body.parameters.details else {"generated_text": result["generated_text"]}

    @app.post("/generate", dependencies=[Depends(require_json)], responses=errors)
    async def generate_text(body: GenerateRequest, request: Request):
        """Text Generation Inference's /generate: the generated text (and, with details, the finish reason, token count and seed)."""
        return await generate(body, request, return_full_text=False)

    @app.post("/predict", dependencies=[Depends(require_json)], responses=errors)
    async def predict(body: GenerateRequest, request: Request):
        """transformers' generation pipeline's answer, [{"generated_text": prompt + continuation}] (return_full_text defaults to true)."""
        result = await answer(body, request, return_full_text=True)
        return [{"generated_text": result["generated_text"]}] if isinstance(result, dict) else result

    async def stream(body: GenerateRequest, request: Request, return_full_text: bool):
        """The generation as server-sent events, one per token as it is produced, or the error response."""
        generation = launch(body, return_full_text)
        if not isinstance(generation, Generation):
            return generation

        async def events():
            try:
                async for kind, payload in generation.tokens(request, config.generation_timeout_s):
                    if kind == "end":
                        payload = payload and {"index": payload["details"]["generated_tokens"], "token": None, **payload}  # no token carried the end
                    if payload:
                        yield server_sent_event(payload if body.parameters.details else {**payload, "details": None})
            except GenerationTimeout as e:
                yield server_sent_event({"error": str(e), "error_type": HTTPStatus(504).phrase})
            except Exception as e:  # noqa: BLE001 - the status is sent already: the error is the stream's last event
                logger.exception("generation failed")
                yield server_sent_event({"error": model_failure(e), "error_type": HTTPStatus(500).phrase})
            finally:
                generation.job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/generate_stream", dependencies=[Depends(require_json)], responses={
        **errors, 200: {"description": "Server-sent events, one per token; the last one holds generated_text (and details when asked)."}})
    async def generate_stream(body: GenerateRequest, request: Request):
        """Text Generation Inference's /generate_stream: one server-sent event per token as it is produced."""
        return await stream(body, request, return_full_text=False)

    @app.post("/", dependencies=[Depends(require_json)], responses=errors)
    async def compat_generate(body: CompatGenerateRequest, request: Request):
        """TGI's route for Hugging Face inference clients (huggingface_hub's InferenceClient posts here): the events of
        /generate_stream when ``stream`` is true, else [/generate's answer]; the prompt comes first unless return_full_text is false."""
        if body.stream:
            return await stream(body, request, return_full_text=True)
        result = await generate(body, request, return_full_text=True)
        return [result] if isinstance(result, dict) else result

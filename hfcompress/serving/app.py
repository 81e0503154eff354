"""The HTTP API: a FastAPI app around a :class:`Predictor` and a :class:`DynamicBatcher`.

``POST /predict`` follows Hugging Face inference conventions (a causal LM also answers Text Generation
Inference's ``/generate`` and ``/generate_stream``, see :mod:`.generation`); ``/health``, ``/ready``, ``/metadata``
and ``/metrics`` (Prometheus) are for operators, ``/`` is a page to try the model, ``/docs`` the
OpenAPI docs. Bad input is answered 4xx with ``{"error": ..., "error_type": ...}``, never 5xx; a
failure of the model is answered 500 and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from http import HTTPStatus
from importlib import resources
from typing import Any, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException

from ..errors import DataError
from .batching import DynamicBatcher, QueueFull
from .config import ServeConfig
from .predictor import InputTooLong, Predictor, input_chars, load_predictor

logger = logging.getLogger("hfcompress.serve")

MODEL_ENV, CONFIG_ENV = "HFCOMPRESS_SERVE_MODEL", "HFCOMPRESS_SERVE_CONFIG"  # how uvicorn's worker processes get their settings
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's directory for metrics shared by worker processes
ENDPOINTS = ("/", "/predict", "/generate", "/generate_stream", "/health", "/ready", "/metadata", "/metrics", "/docs", "/redoc", "/openapi.json")
# /docs (Swagger UI) and /redoc load their viewers' JavaScript and CSS from here, as fastapi-offline ships them: they work
# offline, where FastAPI's own pages would stay blank without their CDN
DOCS_ASSETS = "/docs-assets"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: Optional[StrictInt] = Field(None, ge=1, description="Return the k best labels of each input (default: every label).")


class PredictRequest(BaseModel):
    """A request as Hugging Face's inference API takes it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": "a gripping, beautifully shot film"},
        {"inputs": ["a gripping film", "a tedious mess"], "parameters": {"top_k": 1}},
        {"inputs": {"text": "A man is playing a guitar.", "text_pair": "Someone makes music."}},
    ]})
    inputs: Any = Field(..., description='A text, a list of texts, a pair {"text": ..., "text_pair": ...} or a list of pairs.')
    parameters: Optional[Parameters] = None
    top_k: Optional[StrictInt] = Field(None, ge=1, description="Same as parameters.top_k (the classification pipeline's argument).")


def error_response(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """``{"error": one line naming the problem and the fix, "error_type": the status's phrase}``."""
    return JSONResponse({"error": message, "error_type": HTTPStatus(status).phrase}, status_code=status, headers=headers)


def refusal(error: Union[DataError, QueueFull]) -> JSONResponse:
    """413 for an input over the length limits, 422 for another bad input, 503 with Retry-After when the server is full."""
    if isinstance(error, QueueFull):
        return error_response(503, str(error), {"Retry-After": str(error.retry_after_s)})
    return error_response(413 if isinstance(error, InputTooLong) else 422, str(error))


def model_failure(error: Exception) -> str:
    return f"the model failed on this request ({type(error).__name__}): see the server log"


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may live in one process).

    With ``--workers N`` each process counts its own share in prometheus-client's multiprocess files
    (``PROMETHEUS_MULTIPROC_DIR``, which :func:`serve` sets), and ``/metrics`` of any worker reports
    the sum over all of them.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("hfcompress_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("hfcompress_request_duration_seconds", "HTTP request latency.", ["endpoint"], registry=self.registry)
        self.batch_size = Histogram("hfcompress_batch_size", "Inputs per batch the model ran.", buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("hfcompress_batch_duration_seconds", "Time the model took per batch.", registry=self.registry)
        self.queue_depth = Gauge("hfcompress_queue_depth", "Inputs waiting for the model.", registry=self.registry, multiprocess_mode="livesum")
        self.exposition = self.registry
        if os.environ.get(MULTIPROCESS_ENV):
            from prometheus_client import multiprocess

            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


class RequestGuard:
    """ASGI middleware: counts and times every request, and refuses bodies over ``max_body_bytes``.

    A body whose Content-Length is too large is refused before any of it is read; a streamed one
    as soon as the bytes received pass the limit. Each ``/predict`` request is announced to the
    batcher from its arrival, so that a batch waits for it while its body is still coming.
    """

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, batcher: Optional[DynamicBatcher]):
        self.app, self.metrics, self.max_body_bytes, self.batcher = app, metrics, max_body_bytes, batcher

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else DOCS_ASSETS if path.startswith(DOCS_ASSETS + "/") else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def send_recording_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._check_length(scope)
            if refusal is not None:
                await refusal(scope, receive, send_recording_status)
            else:
                with self.batcher.request() if endpoint == "/predict" and self.batcher else contextlib.nullcontext():
                    await self.app(scope, self._limited(receive), send_recording_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _check_length(self, scope) -> Optional[JSONResponse]:
        length = dict(scope["headers"]).get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return error_response(400, f"Content-Length {length.decode(errors='replace')!r} is not a number of bytes")
        if int(length) > self.max_body_bytes:
            return error_response(413, f"the body has {int(length)} bytes: send at most {self.max_body_bytes} (the server's max_body_bytes)")
        return None

    def _limited(self, receive):
        received = 0

        async def receive_within_limit():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413, f"the body passed {self.max_body_bytes} bytes (the server's max_body_bytes): send a smaller one")
            return message

        return receive_within_limit


async def require_json(request: Request) -> None:  # async: FastAPI runs a plain def dependency in a worker thread, a hop per request
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"content type {content_type or 'missing'!r}: send the body as JSON with Content-Type: application/json")


def _validation_message(error: RequestValidationError, fields: str) -> tuple[int, str]:
    """400 for a body that is not JSON, 422 for JSON of the wrong shape; one line naming the field."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return 400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])}): send a JSON object"
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    if first["type"] == "extra_forbidden":
        return 422, f"unknown field '{where}': send 'inputs' and optionally {fields}"
    if first["type"] == "missing":
        return 422, f"'{where}' is missing: send {{\"inputs\": \"some text\"}}"
    return 422, f"'{where}': {first['msg']}"


def create_app(model_path: Union[str, os.PathLike], config: Optional[ServeConfig] = None, predictor=None) -> FastAPI:
    """The server's app for the model at ``model_path`` (loaded now, so a bad model fails before serving).

    ``predictor`` serves an already loaded model instead (the app still reports ``model_path``).
    """
    from .generation import GenerateParameters, GenerationMetrics, GenerationPredictor, GenerationSlots, add_generation_routes

    config = config or ServeConfig()
    predictor = predictor or load_predictor(model_path, config)
    metrics = Metrics()
    generates = isinstance(predictor, GenerationPredictor)
    if generates:  # each generation runs in a slot of its own; nothing to batch
        batcher, engine = None, GenerationSlots(predictor, GenerationMetrics(metrics.registry))
        fields = f"'parameters' ({', '.join(GenerateParameters.model_fields)})"
    else:
        batcher = engine = DynamicBatcher(
            predictor.predict, config.max_batch_size, config.max_wait_ms, config.max_queue, length=input_chars, on_batch=metrics.observe_batch,
            on_depth=metrics.queue_depth.set,
        )
        fields = "'parameters' (top_k) or 'top_k'"
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        # The libraries and the model loaded at start-up are hundreds of thousands of objects that live as long as the
        # server: frozen, the cyclic garbage collector stops traversing them, which took 0.1-0.4 s per full collection
        # (latency spikes) and a share of every request's CPU time in the younger collections
        gc.collect()
        gc.freeze()
        state["ready"] = True
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish; run whatever they left queued
            state["ready"] = False
            await engine.stop()
            gc.unfreeze()  # a process that goes on (tests, a notebook) collects this app's garbage again

    metadata = predictor.metadata()
    app = FastAPIOffline(
        title="hfcompress model server", lifespan=lifespan, version="1", static_url=DOCS_ASSETS,
        description=f"Serves {metadata['model']} ({metadata['task']}, {metadata['backend']})"
                    + (", streaming tokens over server-sent events." if generates else " with dynamic batching."),
    )
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=config.max_body_bytes, batcher=batcher)
    app.state.predictor, app.state.batcher, app.state.metrics, app.state.config = predictor, batcher, metrics, config

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        status, message = _validation_message(error, fields)
        return error_response(status, message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail), error.headers)

    if generates:
        app.state.generation_slots = engine
        add_generation_routes(app, predictor, engine, config)
    else:
        add_classification_routes(app, predictor, batcher)

    @app.get("/health")
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "Not ready: starting or shutting down."}})
    async def ready():
        """Readiness: the model is loaded and the batcher takes requests."""
        if not state["ready"]:
            return error_response(503, "the server is starting or shutting down", {"Retry-After": "1"})
        return {"status": "ready", "model": metadata["model"], "task": metadata["task"]}

    @app.get("/metadata")
    async def model_metadata():
        """Task, labels, runtime, size on disk, measured metrics, compression and recipe of the model, and the serving settings."""
        return {**metadata, "serving": config.to_dict()}

    @app.get("/metrics")
    async def prometheus_metrics():
        """Prometheus text: requests by status, latency, batch sizes, queue depth."""
        return Response(generate_latest(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    page = resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    return app


def add_classification_routes(app: FastAPI, predictor: Predictor, batcher: DynamicBatcher) -> None:
    """``POST /predict``: labels and scores, in dynamic batches."""

    @app.post("/predict", dependencies=[Depends(require_json)], responses={
        200: {"description": "One list of {label, score} per input (a single input: one list), best first."},
        400: {"description": "The body is not JSON."}, 413: {"description": "Body, text or token count over the limits."},
        415: {"description": "Not application/json."}, 422: {"description": "JSON of the wrong shape."},
        503: {"description": "Queue full or shutting down; retry after Retry-After seconds."},
    })
    async def predict(request: PredictRequest):
        """Labels and scores of one input or a list of inputs, run in dynamic batches."""
        top_k = request.top_k if request.top_k is not None else (request.parameters.top_k if request.parameters else None)
        try:
            items = predictor.parse(request.inputs)
            results = await batcher.submit(items, top_k)
        except (DataError, QueueFull) as e:
            return refusal(e)
        except Exception as e:  # noqa: BLE001 - the model failed: this request gets 500, the server keeps serving
            logger.exception("prediction failed")
            return error_response(500, model_failure(e))
        # results are plain lists, dicts, strings and floats: a JSONResponse skips FastAPI's jsonable_encoder walk over them
        return JSONResponse(results if isinstance(request.inputs, list) else results[0])


def app_from_environment() -> FastAPI:
    """The app each of uvicorn's worker processes builds (``--workers`` > 1), from the variables :func:`serve` sets."""
    return create_app(os.environ[MODEL_ENV], ServeConfig.from_dict(json.loads(os.environ[CONFIG_ENV])))


def serve(model_path: Union[str, os.PathLike], config: ServeConfig) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish (up to ``graceful_timeout_s``)."""
    import uvicorn

    options = dict(host=config.host, port=config.port, timeout_graceful_shutdown=config.graceful_timeout_s, log_level="info",
                   access_log=config.access_log)
    if config.workers == 1:
        uvicorn.run(create_app(model_path, config), **options)
        return
    load_predictor(model_path, config)  # fails here, once, in one line, before workers start
    os.environ[MODEL_ENV], os.environ[CONFIG_ENV] = str(model_path), json.dumps(config.to_dict())
    if not os.environ.get(MULTIPROCESS_ENV):  # the workers' metrics meet in a fresh directory (stale files would add up)
        os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="hfcompress-serve-metrics-")
    uvicorn.run("hfcompress.serving.app:app_from_environment", factory=True, workers=config.workers, **options)

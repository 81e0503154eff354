"""hfcompress serve: a real uvicorn server on a free loopback port, a tiny random BERT as ONNX and as safetensors, talked to over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import threading
import time
from http import HTTPStatus
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import LABELS, cli_server, running_server, save_tiny_classifier  # noqa: E402

from hfcompress.errors import ConfigError, DataError, ModelError  # noqa: E402
from hfcompress.serving.app import DOCS_ASSETS  # noqa: E402
from hfcompress.serving.config import ServeConfig  # noqa: E402

ASSET_TYPES = {".js": {"text/javascript", "application/javascript"}, ".css": {"text/css"}, ".png": {"image/png"}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny classifier with what a compression run leaves beside it: eval results and a method's summary and report."""
    from hfcompress.artifacts import SPARSITY_REPORT_FILE, CompressionSummary, write_method_report

    out = save_tiny_classifier(tmp_path_factory.mktemp("serve") / "tiny")
    write_method_report(out, {"sparsity": 0.5}, CompressionSummary("magnitude", "Pruning", "pruned", "Half the weights zeroed.", SPARSITY_REPORT_FILE))
    return out


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory) -> Path:
    from hfcompress.export import export_onnx

    out = tmp_path_factory.mktemp("serve") / "tiny-onnx"
    export_onnx(checkpoint, out, batch_sizes=[1], sequence_lengths=[16])  # carries the description files /metadata reads
    return out


@pytest.fixture(scope="module")
def onnx_predictor(onnx_dir):
    from hfcompress.serving.predictor import load_predictor

    return load_predictor(onnx_dir, ServeConfig(max_items=4, max_queue=8, max_input_chars=200, max_body_bytes=2000))


@pytest.fixture(scope="module")
def server(onnx_dir, onnx_predictor):
    from hfcompress.serving.app import create_app

    with running_server(create_app(onnx_dir, onnx_predictor.config, predictor=onnx_predictor)) as url:
        yield url


def reference_scores(checkpoint: Path, texts) -> list[dict]:
    """Softmax of the PyTorch model's logits: what every runtime must serve."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval(), AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        probabilities = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1)
    return [{LABELS[i]: float(p[i]) for i in LABELS} for p in probabilities]


def as_scores(result: list[dict]) -> dict:
    return {r["label"]: r["score"] for r in result}


# --- the API ---------------------------------------------------------------------------------------


def test_predict_follows_hugging_face_conventions(server, checkpoint):
    texts = ["a gripping film", "dull and slow"]
    expected = reference_scores(checkpoint, texts)
    single = httpx.post(f"{server}/predict", json={"inputs": texts[0]})
    assert single.status_code == 200
    assert [r["label"] for r in single.json()] == sorted(LABELS.values(), key=lambda label: -expected[0][label])  # best first
    assert as_scores(single.json()) == pytest.approx(expected[0], abs=1e-5)
    batch = httpx.post(f"{server}/predict", json={"inputs": texts}).json()
    assert [as_scores(r) for r in batch] == [pytest.approx(e, abs=1e-5) for e in expected]
    assert [len(r) for r in httpx.post(f"{server}/predict", json={"inputs": texts, "parameters": {"top_k": 1}}).json()] == [1, 1]
    assert len(httpx.post(f"{server}/predict", json={"inputs": texts[0], "top_k": 1}).json()) == 1


def test_predict_takes_sentence_pairs(server, checkpoint):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pair = {"text": "a man plays", "text_pair": "someone makes music"}
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    expected = model(**tokenizer(pair["text"], pair["text_pair"], return_tensors="pt")).logits.softmax(-1)[0].tolist()
    one = httpx.post(f"{server}/predict", json={"inputs": pair}).json()
    assert as_scores(one) == pytest.approx({LABELS[i]: p for i, p in enumerate(expected)}, abs=1e-5)
    assert len(httpx.post(f"{server}/predict", json={"inputs": [pair, pair]}).json()) == 2


def test_operator_endpoints(server, onnx_dir):
    from hfcompress.artifacts import SPARSITY_REPORT_FILE

    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server}/ready").json()["status"] == "ready"
    meta = httpx.get(f"{server}/metadata").json()
    assert meta["task"] == "text-classification" and meta["labels"] == ["NEGATIVE", "POSITIVE"] and meta["backend"] == "onnx"
    assert meta["metrics"] == {"accuracy": 0.75, "loss": 0.5}  # timings left out
    assert meta["compression"][0]["method"] == "magnitude" and meta["parity"]["files"]["model.onnx"]["passed"]
    assert (onnx_dir / SPARSITY_REPORT_FILE).is_file()  # the summary's details travel with it, as the card links them
    assert meta["size_bytes"] > 0 and meta["serving"]["max_items"] == 4
    assert httpx.post(f"{server}/predict", json={"inputs": "warm"}).status_code == 200
    metrics = httpx.get(f"{server}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ('hfcompress_requests_total{endpoint="/predict",status="200"}', "hfcompress_request_duration_seconds_bucket",
                 "hfcompress_batch_size_bucket", "hfcompress_queue_depth"):
        assert name in metrics.text
    assert "/predict" in httpx.get(f"{server}/openapi.json").json()["paths"]
    for viewer in ("/docs", "/redoc"):  # offline: every asset the viewers load comes from this server
        docs = httpx.get(f"{server}{viewer}")
        assets = re.findall(r'(?:src|href)="([^"]*)"', docs.text)
        assert docs.status_code == 200 and "/openapi.json" in docs.text and any(a.endswith(".js") for a in assets)
        assert all(a.startswith(DOCS_ASSETS + "/") for a in assets), assets
        for asset in assets:
            served = httpx.get(server + asset)
            assert served.status_code == 200 and len(served.content) > 1000
            assert served.headers["content-type"].split(";")[0] in ASSET_TYPES[Path(asset).suffix], (asset, served.headers["content-type"])
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "<script>" in page.text
    assert not re.search(r'(src|href)="(https?:)?//', page.text)  # self-contained: these machines are offline


def test_pytorch_checkpoint_serves_the_same_scores(checkpoint):
    from hfcompress.serving.app import create_app

    with running_server(create_app(checkpoint, ServeConfig(backend="pytorch"))) as url:
        assert httpx.get(f"{url}/metadata").json()["backend"] == "pytorch"
        served = httpx.post(f"{url}/predict", json={"inputs": ["a gripping film", "dull"]}).json()
    assert [as_scores(r) for r in served] == [pytest.approx(e, abs=1e-5) for e in reference_scores(checkpoint, ["a gripping film", "dull"])]


def test_token_classification_is_served_as_the_pipeline_tags(tmp_path):
    from transformers import pipeline

    from hfcompress.serving.app import create_app

    model = save_tiny_classifier(tmp_path / "tagger", token_level=True)
    text = "john smith lives here"
    expected = pipeline("token-classification", model=str(model), tokenizer=str(model))(text)
    with running_server(create_app(model, ServeConfig())) as url:
        served = httpx.post(f"{url}/predict", json={"inputs": text}).json()
        meta = httpx.get(f"{url}/metadata").json()
        assert httpx.post(f"{url}/predict", json={"inputs": {"text": "a", "text_pair": "b"}}).status_code == 422  # no pairs for tags
    assert meta["task"] == "token-classification" and not meta["accepts_pairs"]
    assert expected, "the random tagger should tag something other than O"
    assert [{k: e[k] for k in ("entity", "index", "word", "start", "end")} for e in served] == [
        {k: e[k] for k in ("entity", "index", "word", "start", "end")} for e in expected]
    assert [e["score"] for e in served] == pytest.approx([float(e["score"]) for e in expected], abs=1e-5)


# --- bad input: always 4xx with a one-line JSON error, and the server keeps answering -----------------

BAD_REQUESTS = [
    ("malformed JSON", {"content": b'{"inputs": ', "headers": {"content-type": "application/json"}}, 400),
    ("wrong content type", {"content": b'{"inputs": "hi"}', "headers": {"content-type": "text/plain"}}, 415),
    ("no content type", {"content": b'{"inputs": "hi"}'}, 415),
    ("not an object", {"json": ["hi"]}, 422),
    ("missing inputs", {"json": {"text": "hi"}}, 422),
    ("number input", {"json": {"inputs": 3}}, 422),
    ("nested list", {"json": {"inputs": [["a", "b"]]}}, 422),
    ("empty list", {"json": {"inputs": []}}, 422),
    ("empty text", {"json": {"inputs": "   "}}, 422),
    ("pair with wrong keys", {"json": {"inputs": {"text": "a", "second": "b"}}}, 422),
    ("pair with a number", {"json": {"inputs": {"text": "a", "text_pair": 1}}}, 422),
    ("too many items", {"json": {"inputs": ["a"] * 5}}, 422),
    ("text too long", {"json": {"inputs": "a" * 201}}, 413),
    ("unknown field", {"json": {"inputs": "hi", "temperature": 1}}, 422),
    ("unknown parameter", {"json": {"inputs": "hi", "parameters": {"truncate": True}}}, 422),
    ("top_k zero", {"json": {"inputs": "hi", "top_k": 0}}, 422),
    ("top_k as a string", {"json": {"inputs": "hi", "parameters": {"top_k": "2"}}}, 422),
    ("oversized body", {"json": {"inputs": ["a" * 150] * 4 + ["b" * 1500]}}, 413),
    ("oversized body without a length", {"content": iter([b'{"inputs": "', b"a" * 3000, b'"}']), "headers": {"content-type": "application/json"}}, 413),
]


@pytest.mark.parametrize("kind, request_kwargs, status", BAD_REQUESTS, ids=[kind for kind, _, _ in BAD_REQUESTS])
def test_bad_input_gets_4xx_json_error(server, kind, request_kwargs, status):
    response = httpx.post(f"{server}/predict", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and response.json()["error_type"] == HTTPStatus(status).phrase
    assert httpx.post(f"{server}/predict", json={"inputs": "still serving"}).status_code == 200


def test_too_many_tokens_rejected_by_policy(onnx_dir):
    from hfcompress.serving.app import create_app

    with running_server(create_app(onnx_dir, ServeConfig(max_length=8, long_input="reject"))) as url:
        long = httpx.post(f"{url}/predict", json={"inputs": "a b c d e f g h i j"})
        assert long.status_code == 413 and "tokens" in long.json()["error"]
        assert httpx.post(f"{url}/predict", json={"inputs": "a b"}).status_code == 200


def test_model_failure_is_500_and_the_server_keeps_serving(onnx_dir, onnx_predictor):
    from hfcompress.serving.app import create_app
    from hfcompress.serving.predictor import Predictor

    class FailsOnBoom(Predictor):
        def predict(self, inputs, top_k=None):
            if "boom" in inputs:
                raise RuntimeError("kaboom")
            return super().predict(inputs, top_k)

    p = onnx_predictor
    failing = FailsOnBoom(p.model, p.tokenizer, p.task, p.backend, p.model_path, ServeConfig(max_wait_ms=0))
    with running_server(create_app(onnx_dir, failing.config, predictor=failing)) as url:
        broken = httpx.post(f"{url}/predict", json={"inputs": "boom"})
        assert broken.status_code == 500 and "RuntimeError" in broken.json()["error"]
        assert httpx.post(f"{url}/predict", json={"inputs": "fine"}).status_code == 200
        assert 'status="500"' in httpx.get(f"{url}/metrics").text


# --- load: backpressure, batching, shutdown -----------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(onnx_dir, onnx_predictor):
    from hfcompress.serving.app import create_app
    from hfcompress.serving.predictor import Predictor

    release = threading.Event()

    class Blocked(Predictor):
        def predict(self, inputs, top_k=None):
            release.wait(20)
            return super().predict(inputs, top_k)

    p = onnx_predictor
    config = ServeConfig(max_batch_size=1, max_wait_ms=0, max_queue=2, max_items=2)
    blocked = Blocked(p.model, p.tokenizer, p.task, p.backend, p.model_path, config)

    async def load(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            running = asyncio.create_task(client.post("/predict", json={"inputs": "first"}))  # holds the model
            await asyncio.sleep(0.3)
            queued = asyncio.create_task(client.post("/predict", json={"inputs": ["second", "third"]}))  # fills the queue
            await asyncio.sleep(0.3)
            refused = await client.post("/predict", json={"inputs": "fourth"})
            depth = (await client.get("/metrics")).text
            release.set()
            return refused, depth, await running, await queued

    with running_server(create_app(onnx_dir, config, predictor=blocked)) as url:
        refused, metrics, first, queued = asyncio.run(load(url))
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1 and "queue is full" in refused.json()["error"]
    assert "hfcompress_queue_depth 2.0" in metrics
    assert first.status_code == 200 and queued.status_code == 200 and len(queued.json()) == 2


def test_concurrent_requests_run_in_shared_batches(onnx_dir, onnx_predictor):
    from hfcompress.serving.app import create_app

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post("/predict", json={"inputs": f"text number {i}"}) for i in range(24)))
            return responses, (await client.get("/metrics")).text

    p = onnx_predictor
    with running_server(create_app(onnx_dir, ServeConfig(max_batch_size=8, max_wait_ms=50), predictor=p)) as url:
        responses, metrics = asyncio.run(burst(url))
    assert all(r.status_code == 200 for r in responses)
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if line.startswith("hfcompress_batch_size_")}
    assert values["hfcompress_batch_size_sum"] == 24
    assert values["hfcompress_batch_size_count"] < 24 and values['hfcompress_batch_size_bucket{le="1.0"}'] < values["hfcompress_batch_size_count"]


def test_sigterm_lets_in_flight_requests_finish(onnx_dir):
    # a second request is still sending its body: the first one's batch waits (up to 1 s) for it, so both are in flight at SIGTERM
    body = json.dumps({"inputs": "slow sender"}).encode()
    with cli_server(onnx_dir, "--max-wait-ms", "1000", "--max-batch-size", "64") as (server, url):
        slow = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        result = {}
        request = threading.Thread(target=lambda: result.update(response=httpx.post(f"{url}/predict", json={"inputs": "in flight"}, timeout=30)))
        started = time.monotonic()
        request.start()
        time.sleep(0.4)
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        slow.sendall(body[5:])
        slow_answer = slow.makefile("rb").read()
        slow.close()
        request.join(30)
        assert server.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled once it has shut down
        output = server.stdout.read()
    assert "Application shutdown complete" in output and "POST /predict" not in output  # no access log unless asked
    response = result["response"]
    assert response.status_code == 200 and {r["label"] for r in response.json()} == set(LABELS.values())
    assert slow_answer.startswith(b"HTTP/1.1 200") and b'"label"' in slow_answer
    assert time.monotonic() - started >= 0.7  # it waited for its batch rather than being cut off


def test_access_log_when_asked(onnx_dir):
    """With --access-log uvicorn logs every request (off by default: see the end of the SIGTERM test)."""
    with cli_server(onnx_dir, "--access-log") as (server, url):
        assert httpx.post(f"{url}/predict", json={"inputs": "logged"}).status_code == 200
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert '"POST /predict HTTP/1.1" 200' in output, output[-2000:]


@pytest.mark.slow
def test_worker_processes_share_their_metrics(onnx_dir):
    with cli_server(onnx_dir, "--workers", "2", startup_timeout_s=240) as (server, url):
        for i in range(6):  # a new connection each: the kernel spreads them over the workers
            assert httpx.post(f"{url}/predict", json={"inputs": f"text {i}"}).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert 'hfcompress_requests_total{endpoint="/predict",status="200"} 6.0' in metrics  # whichever worker answered /metrics


# --- loading and configuration -----------------------------------------------------------------------


def test_pickled_weights_are_refused(checkpoint, tmp_path):
    import shutil

    import torch

    from hfcompress.serving.predictor import load_predictor

    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickled weights"):
        load_predictor(pickled, ServeConfig(backend="pytorch"))


def test_serve_command_refuses_a_bad_model_path(tmp_path, capsys):
    from hfcompress.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hfcompress: error: model path") and "\n" not in error
    assert main(["serve", str(tmp_path), "--max-batch-size", "0"]) == 2


@pytest.mark.parametrize("values, message", [
    ({"max_batch_size": 0}, "max_batch_size"), ({"port": 70000}, "port"), ({"long_input": "drop"}, "long_input"),
    ({"max_wait_ms": -1}, "max_wait_ms"), ({"max_queue": 4, "max_items": 8}, "max_queue"), ({"batch": 3}, "unknown serve settings"),
])
def test_serve_config_is_validated(values, message):
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_dict(values)


def echo_batcher(**options):
    """A batcher whose model answers each input with itself, and the list of the batches it ran."""
    from hfcompress.serving.batching import DynamicBatcher

    batches = []

    def run(values, top_ks):
        batches.append(values)
        return values

    return DynamicBatcher(run, **options), batches


@contextlib.asynccontextmanager
async def started(batcher):
    await batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


def test_batcher_groups_by_length_and_serves_the_oldest_first():
    batcher, batches = echo_batcher(max_batch_size=3, max_wait_ms=20, max_queue=16)

    async def scenario():
        async with started(batcher):
            texts = ["x" * 50, "aa", "x" * 9, "bbb", "x" * 51, "a"]  # the oldest is long: it goes with the other long ones
            return await asyncio.gather(*(batcher.submit([t]) for t in texts))

    results = asyncio.run(scenario())
    assert [r[0] for r in results] == ["x" * 50, "aa", "x" * 9, "bbb", "x" * 51, "a"]
    assert sorted(map(len, batches[0])) == [9, 50, 51] and sorted(map(len, batches[1])) == [1, 2, 3]


def test_a_lone_request_does_not_wait_for_company():
    batcher, batches = echo_batcher(max_batch_size=8, max_wait_ms=200, max_queue=16)

    async def lone():
        async with started(batcher):
            begun = time.perf_counter()
            with batcher.request():  # announced, as the server does: alone in flight, so nothing can join it
                await batcher.submit(["alone"])
            return time.perf_counter() - begun

    assert asyncio.run(lone()) < 0.05 and batches == [["alone"]]


def test_a_batch_waits_for_a_request_still_in_flight():
    batcher, batches = echo_batcher(max_batch_size=8, max_wait_ms=200, max_queue=16)

    async def client(text, delay):
        with batcher.request():  # arrived; its inputs are queued `delay` seconds later (its body is still coming)
            await asyncio.sleep(delay)
            return await batcher.submit([text])

    async def two():
        async with started(batcher):
            begun = time.perf_counter()
            await asyncio.gather(client("first", 0), client("second", 0.05))
            return time.perf_counter() - begun

    elapsed = asyncio.run(two())
    assert batches == [["first", "second"]]
    assert elapsed < 0.15  # it ran once the second was queued, not at the 200 ms deadline


def test_task_parses_requests():
    from hfcompress.tasks import get_task

    text = get_task("text-classification")
    assert text.serve_inputs("hi") == ["hi"]
    assert text.serve_inputs([{"text": "a", "text_pair": "b"}, "c"]) == [("a", "b"), "c"]
    with pytest.raises(DataError, match="empty list"):
        text.serve_inputs([])
    with pytest.raises(ModelError, match="/predict does not serve the text-generation task.*served on /generate and /generate_stream"):
        get_task("text-generation").serve_outputs(None, None, [None])


def test_worker_processes_build_the_app_from_the_environment(onnx_dir, monkeypatch):
    """With --workers N uvicorn imports the app in each process: the settings travel in environment variables."""
    from hfcompress.serving import app as serving_app

    config = ServeConfig(max_items=3, workers=2)
    monkeypatch.setenv(serving_app.MODEL_ENV, str(onnx_dir))
    monkeypatch.setenv(serving_app.CONFIG_ENV, json.dumps(config.to_dict()))
    with running_server(serving_app.app_from_environment()) as url:
        assert httpx.get(f"{url}/metadata").json()["serving"] == config.to_dict()
        assert httpx.post(f"{url}/predict", json={"inputs": ["a"] * 4}).status_code == 422

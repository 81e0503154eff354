"""hfcompress serve on a causal LM: TGI's /generate and /generate_stream on a real server on loopback, tiny random GPT-2 and Llama."""

from __future__ import annotations

import asyncio
import json
import threading
from http import HTTPStatus
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import running_server  # noqa: E402

from hfcompress.serving.config import ServeConfig  # noqa: E402

WORDS = "the a good bad film movie plot acting was is great awful fine dull story ends here".split()
PROMPT = "the film was"


def save_tiny_lm(directory: Path, arch: str) -> Path:
    """A tiny random causal LM (GPT-2 or Llama, hidden 64) with safetensors weights and a byte-level BPE tokenizer trained here."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 8, vocab_size=300, special_tokens=["<|endoftext|>"])
    (directory / "bpe").mkdir(parents=True)
    bpe.save_model(str(directory / "bpe"))
    tokenizer = GPT2TokenizerFast(str(directory / "bpe" / "vocab.json"), str(directory / "bpe" / "merges.txt"))
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=eos, eos_token_id=eos))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=eos, eos_token_id=eos))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm_dir(request, tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("serve-lm") / request.param, request.param)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("serve-lm") / "gpt2", "gpt2")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("serve-lm") / "llama", "llama")


def reference_generation(model_dir: Path, prompt: str, max_new_tokens: int) -> tuple[list[int], str, dict]:
    """New token ids, their text and TGI's details of transformers' own greedy ``generate``: what the server must answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:].tolist()
    finish = "eos_token" if new[-1] == tokenizer.eos_token_id else "length"
    details = {"finish_reason": finish, "generated_tokens": len(new), "input_length": ids.shape[1], "seed": None}
    return new, tokenizer.decode(new, skip_special_tokens=True), details


def stream_events(client: httpx.Client, body: dict) -> list[dict]:
    """The JSON payloads of a /generate_stream answer's server-sent events."""
    with client.stream("POST", "/generate_stream", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: ")]


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))


# --- the API ---------------------------------------------------------------------------------------


def test_generate_and_stream_match_transformers_greedy_generate(lm_dir):
    from hfcompress.serving.app import create_app

    new_ids, text, details = reference_generation(lm_dir, PROMPT, 12)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True}}
    with running_server(create_app(lm_dir, ServeConfig())) as url, httpx.Client(base_url=url, timeout=60) as client:
        generated = client.post("/generate", json=body).json()
        events = stream_events(client, body)
        plain = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}).json()
        pipeline = client.post("/predict", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12}}).json()
        metadata = client.get("/metadata").json()
        unsaid = client.post("/generate", json={"inputs": PROMPT, "parameters": {"details": True}}).json()["details"]
    assert unsaid["input_length"] + unsaid["generated_tokens"] <= 64  # the default 100 new tokens, cut to what the positions hold
    assert generated["generated_text"] == text and plain == {"generated_text": text}
    assert generated == {"generated_text": text, "details": details}
    assert pipeline == [{"generated_text": PROMPT + text}]  # the pipeline's default: the prompt, then the continuation
    assert [e["token"]["id"] for e in events] == new_ids and [e["index"] for e in events] == list(range(1, len(new_ids) + 1))
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == text
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == text and events[-1]["details"] == generated["details"]
    assert metadata["task"] == "text-generation" and metadata["backend"] == "pytorch" and metadata["max_positions"] == 64
    assert metadata["generation"]["defaults"]["max_new_tokens"] == 100 and metadata["generation"]["max_new_tokens"] == 512


def test_sampling_is_reproducible_with_a_seed(gpt2_dir):
    from hfcompress.serving.app import create_app

    sampled = {"inputs": PROMPT, "parameters": {"max_new_tokens": 16, "do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 0.95, "seed": 7,
                                                 "details": True}}
    with running_server(create_app(gpt2_dir, ServeConfig())) as url, httpx.Client(base_url=url, timeout=60) as client:
        first, again = (client.post("/generate", json=sampled).json() for _ in range(2))
        other = client.post("/generate", json={**sampled, "parameters": {**sampled["parameters"], "seed": 8}}).json()
        unseeded = client.post("/generate", json={**sampled, "parameters": {**sampled["parameters"], "seed": None}}).json()
    assert first == again and first["details"]["seed"] == 7 and other["generated_text"] != first["generated_text"]
    assert isinstance(unseeded["details"]["seed"], int)  # a fresh seed, reported so that the answer can be reproduced


def test_a_stop_sequence_ends_the_generation(llama_dir):
    from hfcompress.serving.app import create_app

    with running_server(create_app(llama_dir, ServeConfig())) as url, httpx.Client(base_url=url, timeout=60) as client:
        greedy = stream_events(client, {"inputs": PROMPT, "parameters": {"max_new_tokens": 16}})
        text = greedy[-1]["generated_text"]
        stop = next(c for i, c in enumerate(text) if i >= 2 and c.isascii() and c.isalnum() and text.index(c) == i)  # first seen mid-text
        stopped = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 16, "stop": [stop], "details": True}}).json()
        streamed = stream_events(client, {"inputs": PROMPT, "parameters": {"max_new_tokens": 16, "stop": [stop]}})
    ids = [e["token"]["id"] for e in streamed]
    assert stopped["details"]["finish_reason"] == "stop_sequence" and stop in stopped["generated_text"]
    assert 1 < len(ids) == stopped["details"]["generated_tokens"] < 16 and ids == [e["token"]["id"] for e in greedy[:len(ids)]]
    assert stop not in "".join(e["token"]["text"] for e in streamed[:-1])  # it ended at the token that completed the stop sequence
    assert streamed[-1]["generated_text"] == stopped["generated_text"]


# --- bad input: 4xx with a one-line message, and the server keeps answering ---------------------------

BAD_GENERATIONS = [
    ("empty prompt", {"inputs": "  "}, 422, "empty"),
    ("prompt not a string", {"inputs": ["a", "b"]}, 422, "one prompt"),
    ("prompt too long for the model", {"inputs": " ".join(["film"] * 40), "parameters": {"max_new_tokens": 30}}, 413, "positions"),
    ("max_new_tokens zero", {"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, 422, "max_new_tokens"),
    ("max_new_tokens over the cap", {"inputs": PROMPT, "parameters": {"max_new_tokens": 33}}, 422, "1 to 32"),
    ("zero temperature when sampling", {"inputs": PROMPT, "parameters": {"do_sample": True, "temperature": 0}}, 422, "temperature"),
    ("top_p zero", {"inputs": PROMPT, "parameters": {"top_p": 0.0}}, 422, "top_p"),
    ("top_p above one", {"inputs": PROMPT, "parameters": {"top_p": 1.5}}, 422, "top_p"),
    ("negative top_k", {"inputs": PROMPT, "parameters": {"top_k": -1}}, 422, "top_k"),
    ("negative seed", {"inputs": PROMPT, "parameters": {"seed": -3}}, 422, "seed"),
    ("too many stop sequences", {"inputs": PROMPT, "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, 422, "stop"),
    ("max_new_tokens as a string", {"inputs": PROMPT, "parameters": {"max_new_tokens": "5"}}, 422, "max_new_tokens"),
    ("temperature as a string", {"inputs": PROMPT, "parameters": {"temperature": "0.5"}}, 422, "temperature"),
    ("do_sample as a number", {"inputs": PROMPT, "parameters": {"do_sample": 1}}, 422, "do_sample"),
    ("unknown parameter", {"inputs": PROMPT, "parameters": {"repetition_penalty": 1.2}}, 422, "max_new_tokens, do_sample"),
    ("missing inputs", {"parameters": {}}, 422, "inputs"),
    ("prompt over max_input_chars", {"inputs": "a" * 301}, 413, "max_input_chars"),
]


@pytest.fixture(scope="module")
def limited_server(gpt2_dir):
    from hfcompress.serving.app import create_app

    with running_server(create_app(gpt2_dir, ServeConfig(max_new_tokens=32, default_max_new_tokens=4, max_input_chars=300))) as url:
        yield url


@pytest.mark.parametrize("endpoint", ["/generate", "/generate_stream"])
@pytest.mark.parametrize("kind, body, status, message", BAD_GENERATIONS, ids=[kind for kind, *_ in BAD_GENERATIONS])
def test_bad_generation_requests_get_4xx_with_the_problem(limited_server, endpoint, kind, body, status, message):
    response = httpx.post(f"{limited_server}{endpoint}", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and response.json()["error_type"] == HTTPStatus(status).phrase
    assert httpx.post(f"{limited_server}/generate", json={"inputs": "still serving"}).status_code == 200


# --- load: concurrency limit, disconnects, timeouts, metrics ------------------------------------------


def slow_predictor(model_dir: Path, config: ServeConfig, token_delay_s: float):
    """The model's predictor whose model waits ``token_delay_s`` before each new token (a model slow enough to watch)."""
    import time

    from hfcompress.serving.predictor import load_predictor

    predictor = load_predictor(model_dir, config)
    generate = predictor.lm.generate

    class SlowStreamer:
        def __init__(self, streamer):
            self.streamer = streamer

        def put(self, value):
            time.sleep(token_delay_s)
            self.streamer.put(value)

        def end(self):
            self.streamer.end()

    predictor.lm.generate = lambda *args, streamer, **kwargs: generate(*args, streamer=SlowStreamer(streamer), **kwargs)
    return predictor


def test_busy_slots_answer_503_and_a_disconnect_frees_its_slot(gpt2_dir):
    from hfcompress.serving.app import create_app

    config = ServeConfig(max_concurrent_generations=1)
    predictor = slow_predictor(gpt2_dir, config, token_delay_s=0.05)
    app = create_app(gpt2_dir, config, predictor=predictor)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 60}}  # 3 s at this pace: it must be cut short

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            async with client.stream("POST", "/generate_stream", json=body) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)  # the generation runs: its slot is taken
                refused = await client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
            # the client went away after one token; the server notices at the next token and stops the generation
            for _ in range(100):
                if app.state.generation_slots.running == 0:
                    break
                await asyncio.sleep(0.02)
            freed = app.state.generation_slots.running == 0
            after = await client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}})
            return first, refused, freed, after, (await client.get("/metrics")).text

    with running_server(app) as url:
        first, refused, freed, after, metrics = asyncio.run(scenario(url))
    assert first.startswith("data: ") and json.loads(first.removeprefix("data: "))["token"]["id"] >= 0
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1 and "slots are busy" in refused.json()["error"]
    assert freed and after.status_code == 200
    assert metric(metrics, 'hfcompress_generations_total{finish_reason="cancelled"}') == 1
    assert metric(metrics, "hfcompress_generated_tokens_total") < 60 + 1 + 2  # the cut-short generation stopped early


def test_a_generation_past_the_timeout_is_stopped(gpt2_dir):
    from hfcompress.serving.app import create_app

    config = ServeConfig(generation_timeout_s=0.3)
    predictor = slow_predictor(gpt2_dir, config, token_delay_s=0.05)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 60}}
    with running_server(create_app(gpt2_dir, config, predictor=predictor)) as url, httpx.Client(base_url=url, timeout=30) as client:
        timed_out = client.post("/generate", json=body)
        events = stream_events(client, body)
        assert client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}).status_code == 200
    assert timed_out.status_code == 504 and "generation_timeout_s" in timed_out.json()["error"]
    assert 1 <= len(events) < 60 and "generation_timeout_s" in events[-1]["error"] and events[-1]["error_type"] == "Gateway Timeout"


def test_metrics_count_tokens_and_time_them(gpt2_dir):
    from hfcompress.serving.app import create_app

    with running_server(create_app(gpt2_dir, ServeConfig())) as url, httpx.Client(base_url=url, timeout=60) as client:
        before = client.get("/metrics").text
        details = [client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 5, "details": True}}).json()["details"]
                   for _ in range(2)]
        after = client.get("/metrics").text
    generated = sum(d["generated_tokens"] for d in details)
    assert metric(after, "hfcompress_generated_tokens_total") - metric(before, "hfcompress_generated_tokens_total") == generated
    assert metric(after, "hfcompress_time_to_first_token_seconds_count") - metric(before, "hfcompress_time_to_first_token_seconds_count") == 2
    assert metric(after, "hfcompress_generation_tokens_per_second_count") - metric(before, "hfcompress_generation_tokens_per_second_count") == 2
    assert metric(after, "hfcompress_generation_tokens_per_second_sum") > 0
    assert metric(after, 'hfcompress_requests_total{endpoint="/generate",status="200"}') == 2
    assert metric(after, "hfcompress_generations_running") == 0


def test_sigterm_lets_a_stream_finish(gpt2_dir):
    """uvicorn's SIGTERM handler (called as the signal would) stops the server only once the stream in flight has ended."""
    import signal
    import socket

    import uvicorn

    from hfcompress.serving.app import create_app

    config = ServeConfig()
    app = create_app(gpt2_dir, config, predictor=slow_predictor(gpt2_dir, config, token_delay_s=0.02))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    while not server.started:
        assert serving.is_alive()
        threading.Event().wait(0.02)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 40, "details": True}}
    first, events = threading.Event(), []

    def read():
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=60) as client:
            with client.stream("POST", "/generate_stream", json=body) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line.removeprefix("data: ")))
                        first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(30)
    server.handle_exit(signal.SIGTERM, None)
    reader.join(60)
    serving.join(60)
    sock.close()
    assert not serving.is_alive() and len(events) > 1
    assert events[-1]["details"]["generated_tokens"] == len(events) and events[-1]["generated_text"] is not None


def test_serve_config_checks_generation_settings():
    from hfcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="default_max_new_tokens"):
        ServeConfig(max_new_tokens=16, default_max_new_tokens=32)
    assert ServeConfig(max_new_tokens=8).new_tokens_default == 8 and ServeConfig().new_tokens_default == 100  # TGI's, capped
    with pytest.raises(ConfigError, match="generation_timeout_s"):
        ServeConfig(generation_timeout_s=0)
    with pytest.raises(ConfigError, match="max_concurrent_generations"):
        ServeConfig(max_concurrent_generations=0)


def test_serve_command_serves_a_causal_lm(gpt2_dir):
    import signal

    from serve_helpers import cli_server

    _, text, _ = reference_generation(gpt2_dir, PROMPT, 6)
    with cli_server(gpt2_dir, "--max-new-tokens", "8", "--threads", "1") as (server, url):
        with httpx.Client(base_url=url, timeout=60) as client:
            generated = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}).json()
            over = client.post("/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 9}})
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert generated == {"generated_text": text} and over.status_code == 422 and "1 to 8" in over.json()["error"]
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output


@pytest.mark.parametrize("puts_prompt", [True, False], ids=["prompt-first", "new-tokens-only"])
def test_token_stream_takes_either_streamer_convention(gpt2_dir, puts_prompt):
    """transformers' generate puts the prompt first; a runtime that puts only new tokens streams the same events."""
    import torch
    from transformers import AutoTokenizer

    from hfcompress.serving.generation import GenerationJob, GenerationMetrics, TokenStream

    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    prompt, new = tokenizer(PROMPT, return_tensors="pt")["input_ids"], tokenizer(" good film", return_tensors="pt")["input_ids"][0]
    job = GenerationJob(PROMPT, prompt, max_new_tokens=len(new), do_sample=False, temperature=1.0, top_k=0, top_p=1.0, seed=None, stop=[],
                        return_full_text=False)
    events = []
    stream = TokenStream(tokenizer, job, {tokenizer.eos_token_id}, events.append, GenerationMetrics(None))
    for value in ([prompt] if puts_prompt else []) + [torch.tensor([token]) for token in new]:
        stream.put(value)
    stream.end()
    assert [e["token"]["id"] for _, e in events] == new.tolist() and "".join(e["token"]["text"] for _, e in events) == " good film"
    assert events[-1][1]["generated_text"] == " good film" and events[-1][1]["details"]["finish_reason"] == "length"


def test_hugging_face_inference_client_talks_to_the_server(gpt2_dir, monkeypatch):
    """huggingface_hub's InferenceClient, pointed at the server's URL, generates and streams as it does with TGI (it posts to /)."""
    from huggingface_hub import InferenceClient, constants

    from hfcompress.serving.app import create_app

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the server is on loopback; the Hub stays out of reach
    _, text, details = reference_generation(gpt2_dir, PROMPT, 5)
    with running_server(create_app(gpt2_dir, ServeConfig())) as url:
        client = InferenceClient(model=url)
        full = client.text_generation(PROMPT, max_new_tokens=5)
        detailed = client.text_generation(PROMPT, max_new_tokens=5, details=True, return_full_text=False)
        tokens = list(client.text_generation(PROMPT, max_new_tokens=5, stream=True, details=True))
    assert full == PROMPT + text  # the text-generation pipeline's default, as TGI's route for inference clients
    assert detailed.generated_text == text and detailed.details.finish_reason == details["finish_reason"]
    assert detailed.details.generated_tokens == details["generated_tokens"]
    assert "".join(t.token.text for t in tokens) == text and tokens[-1].generated_text == PROMPT + text


def test_a_model_failure_is_500_or_the_streams_error_event(gpt2_dir):
    from hfcompress.serving.app import create_app
    from hfcompress.serving.predictor import load_predictor

    config = ServeConfig()
    predictor = load_predictor(gpt2_dir, config)

    def fails(*args, **kwargs):
        raise RuntimeError("kaboom")

    predictor.lm.generate = fails
    with running_server(create_app(gpt2_dir, config, predictor=predictor)) as url, httpx.Client(base_url=url, timeout=60) as client:
        failed = client.post("/generate", json={"inputs": PROMPT})
        events = stream_events(client, {"inputs": PROMPT})
        metrics = client.get("/metrics").text
    assert failed.status_code == 500 and "RuntimeError" in failed.json()["error"]
    assert len(events) == 1 and "RuntimeError" in events[0]["error"] and events[0]["error_type"] == "Internal Server Error"
    assert metric(metrics, 'hfcompress_generations_total{finish_reason="error"}') == 2

"""Tiny models to serve, and a real uvicorn server on a free loopback port, for the serving tests."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

from conftest import save_tiny_wordpiece_tokenizer, tiny_bert_config

from hfcompress.utils.net import free_port

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
TAGS = {0: "O", 1: "B-PER", 2: "I-PER"}
VOCAB = 100


def save_tiny_classifier(out: Path, token_level: bool = False) -> Path:
    """A tiny random BERT (sequence or token classifier) with safetensors weights, its tokenizer and Trainer's eval results."""
    import torch
    from transformers import BertForSequenceClassification, BertForTokenClassification

    from hfcompress.artifacts import EVAL_RESULTS_FILE

    labels = TAGS if token_level else LABELS
    torch.manual_seed(0)
    model_class = BertForTokenClassification if token_level else BertForSequenceClassification
    config = tiny_bert_config(VOCAB, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
    model_class(config).save_pretrained(out)
    save_tiny_wordpiece_tokenizer(out, VOCAB)
    (out / EVAL_RESULTS_FILE).write_text(json.dumps({"eval_accuracy": 0.75, "eval_loss": 0.5, "eval_runtime": 1.2}))
    return out


@contextlib.contextmanager
def running_server(app, graceful_timeout_s: float = 5.0):
    """``app`` served by uvicorn in a thread on a free loopback port; yields its base URL, stops it on exit."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def cli_server(model: Path, *options: str, startup_timeout_s: float = 120):
    """``hfcompress serve MODEL OPTIONS`` in a subprocess on a free port, once it is ready; yields (process, base URL)."""
    import os
    import subprocess
    import sys

    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "hfcompress.cli", "serve", str(model), "--port", str(port), *options],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"hfcompress serve exited with {process.returncode}: {process.stdout.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hfcompress serve was not ready within {startup_timeout_s} s")
            time.sleep(0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

#!/usr/bin/env python
"""Load `hfcompress serve` (the SST-2 student, ONNX int8, dynamic batching) over HTTP against a naive Flask server and against the model in-process.

On loopback, a load generator sends one sentence of SST-2 dev per request at each concurrency
(bounded by a request count and a duration): wrk (a Lua script cycles the request bodies) when it is
installed, light enough in C to leave the 2 cores to the servers, else an async httpx client; to:
  - `hfcompress serve` on the student's ONNX int8 variant, with dynamic batching (the default
    --max-batch-size) and without it (--max-batch-size 1);
  - a naive server as the seed material sketches it: Flask with the fp32 PyTorch teacher, one
    request at a time (written here, started with --naive-server);
and measures throughput, latency p50/p95/p99, the error rate, the server's CPU time per request and
its RSS before and after.
The same model runs in-process (Predictor.predict, outside HTTP) on batches of min(concurrency,
max batch size): the batches the server forms at best. Optionally, a soak (--soak N good requests:
zero errors, RSS growth under 10%) and a bad-request storm (--storm N requests of every bad kind:
all 4xx, no 5xx, the server still answering). The issue's goals are evaluated with their numbers.

    flock /tmp/hfc-cpu.lock python scripts/bench_serve.py --model outputs/sst2-quickstart/student \\
        --teacher outputs/sst2-quickstart/teacher --soak 100000 --storm 10000

A --model without an .onnx file is exported and quantized (dynamic int8, avx2) into --work-dir first.
Writes <output>.json, .md and .png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.utils.bench import CPU_LOCK, REPO, add_data_args, add_output_arg, add_threads_arg, bench_parser, command_line, repo_relative  # noqa: E402
from hfcompress.utils.net import free_port  # noqa: E402

CONCURRENCY = [1, 8, 32, 64]
# the goals on 2 cores
MIN_HTTP_SHARE = 0.80  # at concurrency 32, served throughput >= 80% of in-process under the same batching
MIN_NAIVE_RATIO = 10.0  # served throughput >= 10x the naive server's
MAX_P99_OVERHEAD_MS = 3.0  # p99 at concurrency 1 <= in-process batch-1 p50 + 3 ms
MAX_SOAK_RSS_GROWTH = 0.10
LOAD_GENERATORS = ("auto", "wrk", "httpx")  # auto: wrk when installed
WRK_SCRIPT = Path(__file__).resolve().with_name("bench_serve_wrk.lua")
WRK_UNBOUNDED_S = 86_400  # wrk's --duration when only the request count bounds a load
GENERATOR_NAMES = {"wrk": "wrk, one thread", "httpx": "async httpx"}


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--model", default="outputs/sst2-quickstart/student",
                   help="The student: a directory with an ONNX int8 model (hfcompress export + quantize), or a checkpoint, quantized into --work-dir first.")
    p.add_argument("--teacher", default="outputs/sst2-quickstart/teacher", help="fp32 PyTorch checkpoint the naive Flask server serves ('' to skip it).")
    add_data_args(p)
    p.add_argument("--split", default="dev", help="Split whose sentences make the requests.")
    p.add_argument("--concurrency", type=int, nargs="+", default=CONCURRENCY, help="Concurrent clients of each load level.")
    p.add_argument("--requests", type=int, default=3000, help="Requests per load level (at most; see --duration).")
    p.add_argument("--duration", type=float, default=20.0, help="Seconds per load level at most (the naive server stops here).")
    p.add_argument("--warmup", type=int, default=50, help="Untimed requests before each server's first level.")
    p.add_argument("--max-batch-size", type=int, default=None, help="hfcompress serve --max-batch-size of the batched server (default: the server's).")
    p.add_argument("--soak", type=int, default=0, help="Good requests of the soak (0: no soak; the issue asks 100,000).")
    p.add_argument("--storm", type=int, default=0, help="Bad requests of the storm, cycling every kind (0: no storm; the issue asks 10,000).")
    p.add_argument("--soak-concurrency", type=int, default=32, help="Concurrent clients of the soak and the storm.")
    p.add_argument("--load-generator", choices=LOAD_GENERATORS, default="auto",
                   help="wrk (Debian's wrk, apt-get install -y wrk) or the async httpx client; auto: wrk when installed, else httpx.")
    add_threads_arg(p, help="Intra-op threads of the servers (ONNX Runtime, PyTorch) and of the in-process run.")
    p.add_argument("--work-dir", default="outputs/bench-serve", help="Where a checkpoint --model is exported and quantized.")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="Seconds a server may take to become ready.")
    p.add_argument("--naive-server", action="store_true", help="Only run the naive Flask server of --teacher on --port (the benchmark starts it so).")
    p.add_argument("--port", type=int, default=None, help="--naive-server: the port.")
    add_output_arg(p, "benchmarks/results/serve_sst2")
    return p.parse_args(argv)


# --- the naive server: the seed material's Flask + PyTorch sketch ------------------------------------

def run_naive_server(teacher: str, port: int, threads: int) -> None:
    """Flask's own server, one request at a time, the fp32 PyTorch model called per request."""
    import torch
    from flask import Flask, jsonify, request
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    app = Flask("naive")

    @app.get("/health")
    def health():
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        text = (request.get_json(silent=True) or {}).get("inputs")
        if not isinstance(text, str) or not text:
            return jsonify(error="inputs must be a non-empty string"), 400
        with torch.no_grad():
            probs = model(**tokenizer(text, truncation=True, max_length=128, return_tensors="pt")).logits.softmax(-1)[0]
        best = int(probs.argmax())
        return jsonify([{"label": model.config.id2label[best], "score": float(probs[best])}])

    app.run(host="127.0.0.1", port=port, threaded=False)


# --- servers as processes ----------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a server process and its children (uvicorn workers) have used so far."""
    import psutil

    process = psutil.Process(pid)
    return sum(t.user + t.system for t in (p.cpu_times() for p in [process, *process.children(recursive=True)]))


def rss_mb(pid: int) -> float:
    """Resident memory of a server process and its children (uvicorn workers), in MB."""
    import psutil

    process = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20, 1)


@contextlib.contextmanager
def server(command: list[str], ready_url: str, log: Path, timeout: float) -> Iterator[int]:
    """Run ``command`` until the block ends (SIGTERM, then SIGKILL); yield its pid once ``ready_url`` answers 200."""
    import httpx

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before it was ready; its log: {log}\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout:.0f} s; its log: {log}")
            time.sleep(0.25)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def hfcompress_server(model_dir: Path, port: int, a, log: Path, max_batch_size: Optional[int], options: Sequence[str] = ()):
    command = [sys.executable, "-m", "hfcompress.cli", "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(a.threads), *options]
    if max_batch_size is not None:
        command += ["--max-batch-size", str(max_batch_size)]
    return server(command, f"http://127.0.0.1:{port}/ready", log, a.startup_timeout)


def naive_server(port: int, a, log: Path):
    command = [sys.executable, str(Path(__file__).resolve()), "--naive-server", "--teacher", a.teacher, "--port", str(port), "--threads", str(a.threads)]
    return server(command, f"http://127.0.0.1:{port}/health", log, a.startup_timeout)


# --- load ----------------------------------------------------------------------------------------------

def resolve_load_generator(choice: str) -> str:
    """The load generator that runs for ``choice``: wrk when asked (or, for auto, when installed), else httpx."""
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--load-generator wrk: wrk is not installed (apt-get install -y wrk), or use --load-generator httpx")
    return choice


def load(url: str, requests: list[dict], concurrency: int, count: int, duration: float, label: str, generator: str = "httpx") -> dict:
    """Send ``count`` requests (cycling ``requests``, each ``{"method", "path", "content", "headers"}``) from ``concurrency``
    clients, stopping early after ``duration`` seconds, with ``generator`` (wrk or httpx); every status, and the latencies
    of the answered requests (httpx) or their percentiles (wrk)."""
    if generator == "wrk":
        return wrk_load(url, requests, concurrency, count, duration)
    return asyncio.run(_load(url, requests, concurrency, count, duration, label))


def wrk_load(url: str, requests: list[dict], concurrency: int, count: int, duration: float) -> dict:
    """``load`` by wrk: one thread, ``concurrency`` connections, interrupted once ``count`` requests are answered (bench_serve_wrk.lua)."""
    with tempfile.TemporaryDirectory(prefix="bench-serve-wrk-") as folder:
        index = []
        for i, spec in enumerate(requests):
            Path(folder, f"{i}.body").write_bytes(spec["content"])
            index.append("\t".join([spec["method"], spec["path"], spec["headers"]["content-type"], f"{i}.body"]))
        Path(folder, "index.tsv").write_text("\n".join(index) + "\n")
        seconds = math.ceil(duration) if math.isfinite(duration) else WRK_UNBOUNDED_S
        command = ["wrk", "--threads", "1", "--connections", str(concurrency), "--duration", f"{seconds}s", "--timeout", "60s",
                   "--script", str(WRK_SCRIPT), url, "--", folder, str(count)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        for line in process.stdout:
            output.append(line)
            if line.strip() == "LIMIT REACHED":
                process.send_signal(signal.SIGINT)  # wrk would otherwise sleep out --duration; on SIGINT it reports at once
        process.wait()
    result = next((line.split(" ", 1)[1] for line in output if line.startswith("WRK_RESULT ")), None)
    if process.returncode != 0 or result is None:
        raise RuntimeError(f"wrk failed (exit {process.returncode}): {''.join(output)[-2000:]}")
    parsed = json.loads(result)
    return {**parsed, "statuses": {int(code): n for code, n in parsed["statuses"].items()}}


async def _load(url, requests, concurrency, count, duration, label):
    import httpx
    from tqdm import tqdm

    latencies, statuses, failures = [], {}, []
    next_index = 0
    bar = tqdm(total=count, desc=label, unit="req", mininterval=1.0, leave=False)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        deadline = start + duration

        async def client_loop():
            nonlocal next_index
            while next_index < count and time.perf_counter() < deadline:
                spec = dict(requests[next_index % len(requests)])
                next_index += 1
                sent = time.perf_counter()
                try:
                    response = await client.request(spec.pop("method"), spec.pop("path"), **spec)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                except httpx.HTTPError as e:  # a dropped connection counts as an error, not as a crash of the benchmark
                    failures.append(type(e).__name__)
                    continue
                latencies.append((time.perf_counter() - sent) * 1e3)
                bar.update()

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    bar.close()
    return {"latencies_ms": latencies, "statuses": statuses, "connection_errors": len(failures), "elapsed_s": elapsed}


def percentile(values: list[float], q: float) -> Optional[float]:
    import numpy as np

    return round(float(np.percentile(values, q)), 2) if values else None


def summarize(result: dict) -> dict:
    """Throughput (answered requests per second), latency percentiles and the share of non-2xx answers or dropped connections."""
    answered = sum(result["statuses"].values())
    errors = answered - sum(n for code, n in result["statuses"].items() if 200 <= code < 300) + result["connection_errors"]
    total = answered + result["connection_errors"]
    given = result.get("percentiles_ms")  # wrk's; httpx's latencies are all there
    p50, p95, p99 = (round(given[q], 2) if given else percentile(result["latencies_ms"], int(q)) for q in ("50", "95", "99"))
    return {
        "requests": total, "seconds": round(result["elapsed_s"], 2), "throughput": round(answered / result["elapsed_s"], 1),
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        "errors": errors, "error_rate": round(errors / total, 5) if total else None,
        "statuses": {str(code): n for code, n in sorted(result["statuses"].items())},
    }


def request(body: object = None, *, content: Optional[bytes] = None, content_type: str = "application/json", method: str = "POST",
            path: str = "/predict") -> dict:
    """One request as ``load`` sends it, its JSON ``body`` encoded once here (not per request: the load generator shares the CPU)."""
    if body is not None:
        content = json.dumps(body).encode()
    return {"method": method, "path": path, "content": content or b"", "headers": {"content-type": content_type}}


def good_requests(texts: list[str]) -> list[dict]:
    return [request({"inputs": text}) for text in texts]


def bad_requests(too_many_items: int, oversized_bytes: int) -> dict[str, dict]:
    """One request of each bad kind a client can send, by name: every one must be answered 4xx."""
    return {
        "malformed JSON": request(content=b'{"inputs": "a fine film"'),
        "not UTF-8": request(content=b'{"inputs": "\xff\xfe"}'),
        "wrong content type": request(content=b"inputs=a fine film", content_type="text/plain"),
        "no body": request(content=b""),
        "body not an object": request(["a fine film"]),
        "no inputs": request({"text": "a fine film"}),
        "inputs null": request({"inputs": None}),
        "inputs a number": request({"inputs": 42}),
        "empty text": request({"inputs": ""}),
        "empty list": request({"inputs": []}),
        "non-text item": request({"inputs": ["a fine film", 3]}),
        "too many items": request({"inputs": ["a fine film"] * too_many_items}),
        "oversized body": request({"inputs": "a " * (oversized_bytes // 2)}),
        "pair without text": request({"inputs": {"text_pair": "a fine film"}}),
        "top_k not a number": request({"inputs": "a fine film", "top_k": "all"}),
        "top_k negative": request({"inputs": "a fine film", "top_k": -1}),
        "wrong method": request(method="GET"),
        "unknown route": request({"inputs": "a fine film"}, path="/predictions"),
    }


def storm(url: str, kinds: dict[str, dict], count: int, concurrency: int, generator: str) -> dict:
    """``count`` bad requests cycling every kind; each kind's status, then whether the server still answers.

    Each kind's status is read from one request of it sent alone; the ``count`` requests are counted by status
    (wrk cannot tell which request an answer belongs to), which must all be 4xx as well."""
    import httpx

    by_kind = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for kind, spec in kinds.items():  # one of each first, to record the status of every kind by name
            spec = dict(spec)
            by_kind[kind] = client.request(spec.pop("method"), spec.pop("path"), **spec).status_code
        result = summarize(load(url, list(kinds.values()), concurrency, count, float("inf"), "bad-request storm", generator))
        health = client.get("/health").status_code
        answer = client.post("/predict", json={"inputs": "a fine film"}).status_code
    statuses = [int(code) for code in result["statuses"]] + list(by_kind.values())
    return {
        **result, "kinds": len(kinds), "status_by_kind": by_kind, "all_4xx": all(400 <= code < 500 for code in statuses),
        "server_errors": sum(n for code, n in result["statuses"].items() if int(code) >= 500), "still_answering": health == answer == 200,
    }


# --- in-process -----------------------------------------------------------------------------------------

def in_process(model_dir: Path, texts: list[str], batch_sizes: list[int], threads: int) -> dict:
    """The model's throughput and latency outside HTTP, on consecutive batches of the same sentences."""
    from hfcompress.evaluation.latency import time_batches
    from hfcompress.serving.config import ServeConfig
    from hfcompress.serving.predictor import load_predictor

    predictor = load_predictor(model_dir, ServeConfig(threads=threads))
    results = {}
    for size in batch_sizes:
        batches = [texts[s : s + size] for s in range(0, len(texts) - size + 1, size)]
        results[f"b{size}"] = time_batches(lambda batch: predictor.predict(batch), batches, warmup=3, repeats=1)
    return results


def prepare_model(model: str, work_dir: Path) -> Path:
    """An ONNX directory to serve: ``model`` itself when it holds an .onnx file, else its dynamic int8 quantization (made once)."""
    from hfcompress.evaluation.runtime import onnx_files
    from hfcompress.quantization import PTQConfig, quantize_onnx

    if onnx_files(model):
        return Path(model)
    target = work_dir / f"{Path(model).name}-onnx-int8"
    if not onnx_files(target):
        print(f"== exporting and quantizing {model} (dynamic int8, avx2) to {target}", flush=True)
        quantize_onnx(model, target, PTQConfig(mode="dynamic", preset="avx2"), overwrite=True)
    return target


def batches_run(url: str) -> Optional[tuple[float, float]]:
    """(inputs, batches) the server has run so far, from its Prometheus histogram of batch sizes (None for a server without one)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url + "/metrics", timeout=10)
    if response.status_code != 200:
        return None
    samples = {s.name: s.value for family in text_string_to_metric_families(response.text) if family.name == "hfcompress_batch_size" for s in family.samples}
    return (samples["hfcompress_batch_size_sum"], samples["hfcompress_batch_size_count"]) if samples else None


def measure_levels(url: str, pid: int, texts: list[str], a, label: str) -> dict:
    """Every concurrency level against one running server, with its RSS before and after and the mean batch it ran."""
    load(url, good_requests(texts), min(8, max(a.concurrency)), a.warmup, a.duration, f"{label} warm-up", a.load_generator)
    rss_before = rss_mb(pid)
    levels = {}
    for concurrency in a.concurrency:
        before, cpu_before = batches_run(url), cpu_seconds(pid)
        level = summarize(load(url, good_requests(texts), concurrency, a.requests, a.duration, f"{label} c={concurrency}", a.load_generator))
        answered = sum(level["statuses"].values())
        level["server_cpu_ms_per_request"] = round((cpu_seconds(pid) - cpu_before) * 1e3 / answered, 3) if answered else None
        if before is not None:
            inputs, batches = (now - then for now, then in zip(batches_run(url), before))
            level["mean_batch_size"] = round(inputs / batches, 2) if batches else None
        levels[str(concurrency)] = level
        print(f"   {label} c={concurrency}: {level['throughput']} req/s, p99 {level['p99_ms']} ms", flush=True)
    return {"levels": levels, "rss_mb_before": rss_before, "rss_mb_after": rss_mb(pid)}


def soak(url: str, pid: int, texts: list[str], a) -> dict:
    rss_before = rss_mb(pid)
    result = summarize(load(url, good_requests(texts), a.soak_concurrency, a.soak, float("inf"), "soak", a.load_generator))
    rss_after = rss_mb(pid)
    return {**result, "rss_mb_before": rss_before, "rss_mb_after": rss_after, "rss_growth": round(rss_after / rss_before - 1, 4)}


# --- goals and report -------------------------------------------------------------------------------------

def goals(report: dict, a) -> list[dict]:
    """The issue's goals, each with the numbers it was judged on (None where it was not measured)."""
    served = report["servers"]["hfcompress serve, dynamic batching"]["levels"]
    in_proc = report["in_process"]
    out = []
    if "32" in served:
        batch = f"b{min(32, report['max_batch_size'])}"
        share = served["32"]["throughput"] / in_proc[batch]["throughput"]
        out.append({"goal": f"c=32 throughput >= {MIN_HTTP_SHARE:.0%} of in-process ({batch})", "passed": share >= MIN_HTTP_SHARE,
                    "measured": f"{served['32']['throughput']} vs {in_proc[batch]['throughput']} req/s: {share:.0%}"})
    naive = report["servers"].get("naive Flask, fp32 PyTorch teacher")
    if naive:
        level = "32" if "32" in served else str(max(a.concurrency))
        ratio = served[level]["throughput"] / naive["levels"][level]["throughput"]
        out.append({"goal": f">= {MIN_NAIVE_RATIO:g}x the naive server's throughput (c={level})", "passed": ratio >= MIN_NAIVE_RATIO,
                    "measured": f"{served[level]['throughput']} vs {naive['levels'][level]['throughput']} req/s: {ratio:.1f}x"})
    if "1" in served:
        bound = in_proc["b1"]["p50_ms"] + MAX_P99_OVERHEAD_MS
        out.append({"goal": f"c=1 p99 <= in-process b1 p50 + {MAX_P99_OVERHEAD_MS:g} ms", "passed": served["1"]["p99_ms"] <= bound,
                    "measured": f"p99 {served['1']['p99_ms']} ms vs {in_proc['b1']['p50_ms']} + {MAX_P99_OVERHEAD_MS:g} = {bound:.2f} ms"})
    if report.get("soak"):
        s = report["soak"]
        out.append({"goal": f"soak: {a.soak:,} good requests, zero errors, RSS growth < {MAX_SOAK_RSS_GROWTH:.0%}",
                    "passed": s["errors"] == 0 and s["requests"] == a.soak and s["rss_growth"] < MAX_SOAK_RSS_GROWTH,
                    "measured": f"{s['requests']:,} requests, {s['errors']} errors, RSS {s['rss_mb_before']} -> {s['rss_mb_after']} MB ({s['rss_growth']:+.1%})"})
    if report.get("storm"):
        s = report["storm"]
        out.append({"goal": f"storm: {a.storm:,} bad requests of >= 10 kinds, all 4xx, zero 5xx, server still answering",
                    "passed": s["kinds"] >= 10 and s["all_4xx"] and s["server_errors"] == 0 and s["still_answering"] and s["requests"] == a.storm,
                    "measured": f"{s['requests']:,} requests of {s['kinds']} kinds, statuses {s['statuses']}, still answering: {s['still_answering']}"})
    return out


def markdown(report: dict) -> str:
    # the 1-minute averages: the 5- and 15-minute ones still hold whatever ran before the benchmark started
    busy = max(report["load_average_before"][0], report["load_average_after"][0]) > report["hardware"]["cores"]
    lines = [
        "# Serving SST-2: `hfcompress serve` under load",
        "",
        f"Model: `{report['model']}` (ONNX int8) served by `hfcompress serve`; naive: `{report['teacher']}` (fp32 PyTorch, Flask, one request at a time). "
        f"{report['hardware']['cpu']} ({', '.join(report['hardware']['isa'])}), {report['hardware']['cores']} cores, {report['threads']} intra-op thread(s) per server; "
        f"load generator ({GENERATOR_NAMES[report['load_generator']]}) on the same machine, loopback. Load average (1, 5, 15 min) of the machine "
        f"{report['load_average_before']} before and {report['load_average_after']} after"
        + (": above the core count, other jobs shared the CPU." if busy else "."),
        "",
        "| server | concurrency | requests | throughput req/s | p50 ms | p95 ms | p99 ms | error rate | server CPU ms/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["servers"].items():
        for level, r in result["levels"].items():
            lines.append(f"| {name} | {level} | {r['requests']} | {r['throughput']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['error_rate']} "
                         f"| {r.get('server_cpu_ms_per_request')} |")
    lines += ["", "| server | RSS before MB | RSS after MB |", "|---|---|---|"]
    lines += [f"| {name} | {r['rss_mb_before']} | {r['rss_mb_after']} |" for name, r in report["servers"].items()]
    lines += ["", f"In-process (`Predictor.predict`, no HTTP), batches of min(concurrency, {report['max_batch_size']}):", "",
              "| batch | throughput /s | p50 ms | p95 ms |", "|---|---|---|---|"]
    lines += [f"| {b[1:]} | {r['throughput']} | {r['p50_ms']} | {r['p95_ms']} |" for b, r in report["in_process"].items()]
    batched, unbatched = (report["servers"].get(n) for n in ("hfcompress serve, dynamic batching", "hfcompress serve, no batching (max batch 1)"))
    if batched and unbatched:
        lines += ["", "What dynamic batching gives (throughput with / without, p99 with / without):", ""]
        for level, r in batched["levels"].items():
            u = unbatched["levels"][level]
            lines.append(f"- c={level}: {r['throughput']} / {u['throughput']} req/s ({r['throughput'] / u['throughput']:.2f}x), p99 {r['p99_ms']} / {u['p99_ms']} ms; "
                         f"mean batch {r.get('mean_batch_size')}")
    if report.get("storm"):
        lines += ["", "Bad-request storm, status of each kind: " + ", ".join(f"{k} {v}" for k, v in report["storm"]["status_by_kind"].items())]
    lines += ["", "## Goals", "", "| goal | passed | measured |", "|---|---|---|"]
    lines += [f"| {g['goal']} | {'yes' if g['passed'] else '**no**'} | {g['measured']} |" for g in report["goals"]]
    lines += ["", "Reproduce:", "", "```bash", report["command"], "```", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in report["servers"].items():
        levels = [int(c) for c in result["levels"]]
        left.plot(levels, [r["throughput"] for r in result["levels"].values()], marker="o", label=name)
        right.plot(levels, [r["p99_ms"] for r in result["levels"].values()], marker="o", label=name)
    levels = [int(c) for c in report["servers"]["hfcompress serve, dynamic batching"]["levels"]]
    in_proc = [report["in_process"][f"b{min(c, report['max_batch_size'])}"]["throughput"] for c in levels]
    left.plot(levels, in_proc, linestyle="--", color="gray", label="in-process, same batching")
    for axis, label in ((left, "throughput (requests/s)"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"SST-2 student served on {report['hardware']['cores']} cores ({report['threads']} intra-op thread(s) per server)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.naive_server:
        run_naive_server(a.teacher, a.port, a.threads)
        return 0
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.evaluation import evaluation_texts
    from hfcompress.evaluation.latency import cpu_info
    from hfcompress.serving.config import ServeConfig
    from hfcompress.utils.io import write_results

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops the servers it started
    a.load_generator = resolve_load_generator(a.load_generator)
    command = command_line(Path(__file__), argv, prefix=CPU_LOCK)
    model_dir = prepare_model(a.model, Path(a.work_dir))
    texts = [t for t in evaluation_texts(TaskData(DataConfig(path=a.data, name=a.data_config, eval_split=a.split), splits=[a.split])) if t]
    serve_defaults = ServeConfig()  # the servers run with its limits
    max_batch_size = a.max_batch_size or serve_defaults.max_batch_size
    output = Path(a.output)
    logs = Path(a.work_dir) / "logs"
    report = {
        "model": repo_relative(model_dir), "teacher": repo_relative(a.teacher) if a.teacher else None, "threads": a.threads,
        "hardware": cpu_info(a.threads), "max_batch_size": max_batch_size, "concurrency": a.concurrency,
        "requests_per_level": a.requests, "max_seconds_per_level": a.duration, "load_generator": a.load_generator, "servers": {},
        "load_average_before": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine share its cores
    }
    print("== in-process", flush=True)
    report["in_process"] = in_process(model_dir, texts, sorted({1, *(min(c, max_batch_size) for c in a.concurrency)}), a.threads)
    for name, batch in (("hfcompress serve, dynamic batching", a.max_batch_size), ("hfcompress serve, no batching (max batch 1)", 1)):
        print(f"== {name}", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with hfcompress_server(model_dir, port, a, logs / f"serve-b{batch or 'default'}.log", batch) as pid:
            report["servers"][name] = measure_levels(url, pid, texts, a, name)
            if batch != 1 and a.soak:
                print(f"== soak: {a.soak:,} requests", flush=True)
                report["soak"] = soak(url, pid, texts, a)
            if batch != 1 and a.storm:
                print(f"== bad-request storm: {a.storm:,} requests", flush=True)
                kinds = bad_requests(too_many_items=serve_defaults.max_items + 1, oversized_bytes=serve_defaults.max_body_bytes + 1)
                report["storm"] = storm(url, kinds, a.storm, a.soak_concurrency, a.load_generator)
    if a.teacher:
        name = "naive Flask, fp32 PyTorch teacher"
        print(f"== {name}", flush=True)
        port = free_port()
        with naive_server(port, a, logs / "naive.log") as pid:
            report["servers"][name] = measure_levels(f"http://127.0.0.1:{port}", pid, texts, a, name)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["goals"] = goals(report, a)
    report["command"] = command
    write_results(output, report, markdown(report))
    plot(report, output.with_suffix(".png"))
    for goal in report["goals"]:
        print(f"{'PASS' if goal['passed'] else 'FAIL'} {goal['goal']}: {goal['measured']}")
    print(f"wrote {output}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

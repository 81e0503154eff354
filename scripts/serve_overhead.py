#!/usr/bin/env python
"""The CPU time `hfcompress serve` spends per request, against the same model's CPU time per input in-process.

CPU seconds of the server process (psutil: user + system, every thread) are read before and after
--requests requests at each concurrency, --runs times; the median over runs is the figure. Unlike
throughput and latency, CPU time per request barely moves when other jobs share the machine's cores,
so HTTP overhead can be compared before and after a change on a busy machine. The in-process figure
is Predictor.predict's CPU time per input on batches of the sizes the server formed (read from its
/metrics), so the difference is what the HTTP layer, the batcher and the event loop cost.

    python scripts/serve_overhead.py --model outputs/sst2-quickstart/student-onnx --requests 2000 --runs 5

Writes <output>.json when --output is given.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import LOAD_GENERATORS, batches_run, cpu_seconds, good_requests, hfcompress_server, load, resolve_load_generator  # noqa: E402

from hfcompress.utils.bench import add_data_args, add_threads_arg, bench_parser, command_line  # noqa: E402
from hfcompress.utils.net import free_port  # noqa: E402


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--model", required=True, help="Model directory hfcompress serve serves (an ONNX export or a safetensors checkpoint).")
    add_data_args(p)
    p.add_argument("--split", default="dev", help="Split whose sentences make the requests.")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="Concurrent clients of each load level.")
    p.add_argument("--requests", type=int, default=2000, help="Requests per run.")
    p.add_argument("--runs", type=int, default=5, help="Runs per concurrency; the median is reported.")
    p.add_argument("--load-generator", choices=LOAD_GENERATORS, default="auto", help="wrk (lighter on a small machine) or httpx; auto: wrk when installed.")
    p.add_argument("--serve-option", action="append", default=[], help="Extra option of hfcompress serve (repeatable), e.g. --serve-option=--max-batch-size=1.")
    add_threads_arg(p, help="Intra-op threads of the server and of the in-process run.")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="Seconds the server may take to become ready.")
    p.add_argument("--output", default=None, help="Write the results to this path (.json added).")
    return p.parse_args(argv)


def in_process_cpu_ms(model: str, texts: list[str], batch_size: int, threads: int, inputs: int = 2000) -> float:
    """Predictor.predict's CPU milliseconds per input on consecutive batches of ``batch_size`` of ``texts``."""
    from hfcompress.serving.config import ServeConfig
    from hfcompress.serving.predictor import load_predictor

    predictor = load_predictor(model, ServeConfig(threads=threads))
    batches = [texts[(s % len(texts)):(s % len(texts)) + batch_size] for s in range(0, inputs, batch_size)]
    batches = [b for b in batches if len(b) == batch_size]
    for batch in batches[:5]:
        predictor.predict(batch)
    started = time.process_time()
    for batch in batches:
        predictor.predict(batch)
    return (time.process_time() - started) * 1e3 / (len(batches) * batch_size)


def main(argv=None) -> int:
    from hfcompress.data import DataConfig, TaskData
    from hfcompress.evaluation import evaluation_texts

    a = parse_args(argv)
    generator = resolve_load_generator(a.load_generator)
    texts = [t for t in evaluation_texts(TaskData(DataConfig(path=a.data, name=a.data_config, eval_split=a.split), splits=[a.split])) if t]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    report = {"model": a.model, "threads": a.threads, "requests_per_run": a.requests, "runs": a.runs, "serve_options": a.serve_option,
              "load_generator": generator, "load_average_before": [round(x, 2) for x in os.getloadavg()], "levels": {}}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-overhead-{port}.log"
    with hfcompress_server(Path(a.model), port, a, log, None, a.serve_option) as pid:
        load(url, good_requests(texts[:50]), 4, 100, float("inf"), "warm-up", generator)
        for concurrency in a.concurrency:
            runs, batches = [], []
            for run in range(a.runs):
                inputs_before, batches_before = batches_run(url)
                cpu_before = cpu_seconds(pid)
                result = load(url, good_requests(texts), concurrency, a.requests, float("inf"), f"c={concurrency} run {run + 1}", generator)
                cpu = cpu_seconds(pid) - cpu_before
                answered = sum(result["statuses"].values())
                inputs, batches_ran = (now - then for now, then in zip(batches_run(url), (inputs_before, batches_before)))
                runs.append(round(cpu * 1e3 / answered, 3))
                batches.append(inputs / batches_ran)
            report["levels"][str(concurrency)] = {"cpu_ms_per_request": runs, "median_cpu_ms_per_request": statistics.median(runs),
                                                  "mean_batch_size": round(statistics.mean(batches), 2)}
            print(f"c={concurrency}: server CPU {statistics.median(runs):.3f} ms/request (runs {runs}), mean batch {statistics.mean(batches):.2f}", flush=True)
    sizes = sorted({max(1, round(level["mean_batch_size"])) for level in report["levels"].values()})
    report["in_process_cpu_ms_per_input"] = {f"b{size}": round(in_process_cpu_ms(a.model, texts, size, a.threads), 3) for size in sizes}
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["command"] = command_line(Path(__file__), argv)
    print(f"in-process CPU ms per input: {report['in_process_cpu_ms_per_input']}; load average {report['load_average_before']} -> {report['load_average_after']}")
    if a.output:
        Path(a.output).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

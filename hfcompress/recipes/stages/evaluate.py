"""The ``evaluate`` stage: task metrics of several models (PyTorch or ONNX) side by side, optionally latency and the compression report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...artifacts import COMPRESSION_REPORT_NAME, EVALUATION_RESULTS_FILE, EVALUATION_TABLE_FILE
from ...errors import ConfigError
from ...evaluation import (
    accuracy_gate, classification_predictions, compression_row, evaluate_model, evaluation_texts, measure_latency, write_compression_report,
)
from ...tasks import get_task
from ...evaluation.generation import DEFAULT_LOADER, GenerationSettings, GenerationVariant, measure_in_subprocess
from ...utils.io import atomic_write_json, atomic_write_text
from ..context import RunContext
from ..registry import StageConfig, register_stage


@dataclass
class EvaluateStageConfig(StageConfig):
    models: list[str] = field(
        metadata={"help": "Models to evaluate: earlier stages' names (an export stage gives an ONNX model), local paths or Hub ids.", "model_ref": True}
    )
    name: str = field(default="evaluation", metadata={"help": "Stage name; also its output sub-directory."})
    batch_size: int = field(default=64, metadata={"help": "Batch size for the task metrics."})
    latency: bool = field(default=False, metadata={"help": "Also time every model (p50/p95 per call, throughput) on evaluation sentences."})
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32], metadata={"help": "Batch sizes to time."})
    threads: int = field(default=2, metadata={"help": "Intra-op threads of PyTorch and ONNX Runtime while timing."})
    latency_samples: int = field(default=256, metadata={"help": "Evaluation sentences the latency batches are made of (the same for every model)."})
    warmup: int = field(default=5, metadata={"help": "Untimed calls before timing."})
    repeats: int = field(default=3, metadata={"help": "Timed passes over the latency batches."})
    report: bool = field(default=True, metadata={"help": f"Write {COMPRESSION_REPORT_NAME}.{{json,md,png}}: one row per model, ratios to the first."})
    onnx_file: Optional[str] = field(default=None, metadata={"help": "ONNX file to load from ONNX model directories (default model.onnx)."})
    gate_margin: Optional[float] = field(default=None, metadata={
        "help": "Non-inferiority margin in points: gate every model against the first (paired bootstrap interval of the accuracy "
                "difference and McNemar's test); the report and the card print the verdict. Classification tasks."})
    generation: bool = field(
        default=False,
        metadata={"help": "Text generation: also measure strided perplexity on the evaluation split's text (rows joined by newlines), prefill and "
                  "decode tokens/s, time to first token and peak RSS, each model in its own process through hfcompress.generation's runtimes."},
    )
    context: int = field(default=512, metadata={"help": "Generation: tokens per perplexity window."})
    stride: int = field(default=512, metadata={"help": "Generation: tokens between perplexity windows (= context: non-overlapping)."})
    max_tokens: Optional[int] = field(default=8192, metadata={"help": "Generation: score the first N tokens of the text (null: all of it)."})
    prompt_tokens: int = field(default=512, metadata={"help": "Generation: prompt length for prefill, time to first token and decode (real text)."})
    new_tokens: int = field(default=128, metadata={"help": "Generation: tokens generated per decode run (greedy, end of sequence ignored)."})

    def __post_init__(self):
        if not self.models:
            raise ConfigError("models: list at least one model to evaluate")
        if self.latency and (self.threads < 1 or self.latency_samples < 1 or self.repeats < 1 or not self.latency_batch_sizes):
            raise ConfigError("threads, latency_samples, repeats and latency_batch_sizes must be positive when latency is on")
        if self.gate_margin is not None and (self.gate_margin < 0 or len(self.models) < 2):
            raise ConfigError("gate_margin: a margin >= 0 in points, and at least two models (the first is the reference)")
        if self.generation:
            self.generation_settings()  # bad windows or counts fail when the recipe loads

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(self.context, self.stride, self.max_tokens, self.prompt_tokens, self.new_tokens, self.warmup, self.repeats, self.threads)

    def disk_bytes(self, ctx: RunContext) -> tuple[int, int]:
        return 0, 0  # results, a report and a chart

    def preflight(self, ctx: RunContext) -> None:
        for ref in self.models:
            ctx.planned_model(ref)  # a missing local path or Hub id fails here, before earlier stages train
        if self.gate_margin is not None and not ctx.data().task.default_metrics:
            raise ConfigError(f"{self.name}.gate_margin: the gate compares per-example predictions; the task has none (text generation): remove it")
        task = get_task(ctx.data_config.task)
        if self.generation and task.has_labels:
            raise ConfigError(f"generation: true measures language models, and data.task is '{task.name}': leave generation off for it")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_NOT_METRICS = {"name", "path", "backend", "num_examples", "num_parameters", "size_mb", "zipped_size_mb", "sparsity", "latency", "gate", "generation"}
# how the stage opens a model for generation (a module attribute, so that a test can give a stand-in runtime)
CAUSAL_LM_LOADER = DEFAULT_LOADER


def gates_against_first(cfg: EvaluateStageConfig, ctx: RunContext) -> list[dict]:
    """The accuracy gate of every model after the first against the first, on the same evaluation examples."""
    outcomes = []
    for ref in cfg.models:
        predictions, labels = classification_predictions(ctx.resolve(ref), ctx.data(), cfg.batch_size, onnx_file=cfg.onnx_file)
        outcomes.append(predictions == labels)
    return [{"reference": cfg.models[0], **accuracy_gate(correct, outcomes[0], cfg.gate_margin)} for correct in outcomes[1:]]


@register_stage("evaluate", EvaluateStageConfig)
def run_evaluate(cfg: EvaluateStageConfig, ctx: RunContext):
    staging = ctx.fresh_staging(cfg.name)
    if ctx.state.is_main_process:
        texts = evaluation_texts(ctx.data(), cfg.latency_samples) if cfg.latency else []
        corpus = "\n".join(evaluation_texts(ctx.data())) if cfg.generation else ""
        rows, report_rows = [], []
        for ref in cfg.models:
            path = ctx.resolve(ref)
            result = evaluate_model(path, ctx.data(), cfg.batch_size, onnx_file=cfg.onnx_file)
            latency = None
            if cfg.latency:
                latency = measure_latency(
                    path, path, texts, cfg.latency_batch_sizes, cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats, onnx_file=cfg.onnx_file
                )
            generation = None
            if cfg.generation:
                generation = measure_in_subprocess(GenerationVariant(ref, str(path), CAUSAL_LM_LOADER), corpus, cfg.generation_settings())
            rows.append({"name": ref, **result, **({"latency": latency} if latency else {}), **({"generation": generation} if generation else {})})
            report_rows.append(compression_row(ref, result, latency, generation))
        if cfg.gate_margin is not None:
            for row, report_row, gate in zip(rows[1:], report_rows[1:], gates_against_first(cfg, ctx)):
                row["gate"] = report_row["gate"] = gate
        atomic_write_json(staging / EVALUATION_RESULTS_FILE, rows)
        metric_columns = [k for k in rows[0] if k not in _NOT_METRICS]
        table = markdown_table(rows, ["name", "backend", *metric_columns, "num_parameters", "size_mb"])
        atomic_write_text(staging / EVALUATION_TABLE_FILE, table)
        print(table)
        if cfg.report:
            write_compression_report(report_rows, staging, title=f"{ctx.name}: compression report")
    return ctx.publish(staging, cfg.name)

"""What a distillation run did: ``distillation.json`` and the compression summary the model card renders."""

from __future__ import annotations

from ..artifacts import DISTILLATION_FILE, CompressionSummary, set_entries, write_method_report

# Trainer's bookkeeping in its eval metrics, not a measure of the model.
_EVAL_BOOKKEEPING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step")


def divergence(beta: float) -> str:
    """The KD term's divergence as GKD's ``beta`` picks it (0: forward KL, 1: reverse KL, between: generalized JSD)."""
    if beta == 0:
        return "KL(teacher_T ‖ student_T)"
    if beta == 1:
        return "KL(student_T ‖ teacher_T)"
    return "JSD_β(teacher_T ‖ student_T)"


def format_layer_map(pairs: list[tuple[int, int]]) -> str:
    """Layer pairs in the syntax ``layer_map`` is written in (student:teacher)."""
    return ",".join(f"{s}:{t}" for s, t in pairs)


def eval_results(log_history: list[dict]) -> dict:
    """The last evaluation's metrics (``eval_`` prefix dropped, Trainer's timings left out), rounded for the card."""
    last = next((entry for entry in reversed(log_history) if "eval_loss" in entry), {})
    return {k.removeprefix("eval_"): round(v, 6) for k, v in last.items() if k not in _EVAL_BOOKKEEPING and isinstance(v, (int, float))}


def summarize_distillation(report: dict) -> CompressionSummary:
    """The compression summary of a ``distillation.json``, as :meth:`DistillationTrainer.distillation_report` writes it."""
    loss = (f"loss = alpha · CE(student, labels) + (1 − alpha) · T² · {divergence(report.get('beta') or 0)} "
            f"with T = {report['temperature']}, alpha = {report['alpha']}" + (f", β = {report['beta']}" if report.get("beta") else ""))
    if report.get("teacher_cache_top_k"):
        loss += f", over the teacher's top {report['teacher_cache_top_k']} tokens and one tail bucket"
    if report.get("hidden_distill_weight"):
        loss += f", plus {report['hidden_distill_weight']} × {report['hidden_distill_loss']} between hidden states of layers {report['layer_map']}"
    if report.get("attention_distill_weight"):
        loss += f", plus {report['attention_distill_weight']} × KL between attention maps of layers {report['layer_map']}"
    student = f" ({report['student']})" if report.get("student") else ""
    sentence = f"The student{student} was trained to match the teacher `{report['teacher']}`: {loss}."
    if report.get("lmbda"):
        sentence += (f" On-policy (GKD): a fraction {report['lmbda']} of the batches are {report['max_new_tokens']} tokens the student "
                     "sampled after each text, scored by the teacher, without hard labels.")
    if report.get("seq_kd"):
        sentence += f" Sequence-level KD: the other batches are {report['max_new_tokens']} tokens the teacher sampled after each text."
    settings = set_entries(report, (
        "teacher", "student", "alpha", "temperature", "beta", "hidden_distill_weight", "hidden_distill_loss", "attention_distill_weight",
        "layer_map", "teacher_cache_dtype", "teacher_cache_top_k", "lmbda", "seq_kd", "max_new_tokens", "epochs", "max_steps",
    ))
    results = set_entries(report, (
        "teacher_layers", "student_layers", "teacher_parameters", "student_parameters", "parameters_vs_teacher",
        "steps", "train_loss", "teacher_forward_passes", "eval",
    ))
    return CompressionSummary(
        method="distillation", title="Distillation", applied=f"distilled from `{report['teacher']}`", summary=sentence,
        details_file=DISTILLATION_FILE, settings=settings, results=results, tags=["distillation"],
    )


def write_distillation_report(directory, report: dict) -> None:
    """``distillation.json`` and its compression summary."""
    write_method_report(directory, report, summarize_distillation(report))

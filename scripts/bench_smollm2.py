#!/usr/bin/env python
"""The generative-LM benchmark (issue 21): SmolLM2-135M-Instruct through hfcompress against PyTorch, ONNX Runtime and llama.cpp.

1. Builds the variants through hfcompress's stages (export with a KV cache, bitsandbytes NF4, ONNX weight-only
   int4 with each algorithm, onnxruntime-genai's int4 build, the half-depth student in int4) with --resume.
   A variant that cannot be measured here (no llama.cpp, no --student) is listed as skipped, never faked.
2. Measures every variant in its own process, in the issue's order: WikiText-2 perplexity (context, stride and
   token count stated), prefill tokens/s on a 512-token prompt, decode tokens/s over 128 new tokens and time to
   first token at batch 1 (greedy), peak RSS and size on disk, at a fixed thread count.
3. Writes <output>.json/.md/.png (perplexity against decode tokens/s) and checks the issue's goals.

    python scripts/bench_smollm2.py --student outputs/smollm2-student-15l     # the full run (minutes per variant)
    python scripts/bench_smollm2.py --quick --output /tmp/smollm2_smoke          # a tiny random Llama: the same code path
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hfcompress.errors import HFCompressError  # noqa: E402
from hfcompress.tasks.text_generation import TEXT_GENERATION  # noqa: E402
from hfcompress.utils.bench import (  # noqa: E402
    REPO, SMOLLM2_GGUF, SMOLLM2_TEACHER, SST2_DATA, add_output_arg, add_threads_arg, bench_parser, command_line, goals_markdown, goals_met, print_report, repo_relative,
    smollm2_teacher,
)

WIKITEXT = "../shared/assets/data/wikitext2-raw/wiki.test.lf.raw"  # "".join of the split's rows (the asset's README)
LLAMACPP_LOADER = "hfcompress.evaluation.llamacpp:load_llamacpp"
# the runtime that opens PyTorch checkpoints and ONNX exports (a module attribute: the smoke test gives a stand-in)
CAUSAL_LM_LOADER = "hfcompress.generation:load_causal_lm"
INT4_ALGORITHMS = ("rtn", "hqq", "gptq")
# the quantize stage's ONNX weight-only settings: int4 blocks of 32 (llama.cpp's Q4_1 block), the output layer in int8 (as the
# GGUF keeps it), embeddings left in fp32 (the GGUF's are Q8_0, which 4-bit GatherBlockQuantized would round further);
# GPTQ calibrates on 8 sequences of 256 tokens of the recipe's training text (ONNX Runtime collects its Hessians one MatMul at a time)
def weight_only(algorithm: str) -> dict:
    return {"mode": "weight_only", "calibration_samples": 8, "weight_only": {"algorithm": algorithm, "bits": 4, "block_size": 32}}
GOALS = {
    "perplexity_vs_teacher": ("perplexity as a multiple of the fp32 teacher's", "<=", 1.02),
    "decode_vs_llamacpp": ("decode tokens/s as a multiple of llama.cpp's", ">=", 1.0),
}
STUDENT_GOALS = {
    "decode_vs_int4_teacher": ("decode tokens/s as a multiple of the int4 teacher's", ">=", 1.8),
    "perplexity_vs_teacher": ("perplexity as a multiple of the fp32 teacher's", "<=", 1.5),
}


def parse_args(argv=None):
    p = bench_parser(__doc__)
    p.add_argument("--teacher", default=None, help=f"The teacher: a PyTorch checkpoint directory (or Hub id). Default: {SMOLLM2_TEACHER}, "
                   "converted from the GGUF with convert-gguf when missing.")
    p.add_argument("--gguf", default=None, help=f"The GGUF file llama.cpp runs (variant 3): the teacher's original weights. Default: {SMOLLM2_GGUF}, "
                   "fetched by the asset's get.sh when missing.")
    p.add_argument("--student", default=None, help="The half-depth distilled student's checkpoint directory (left out when not given).")
    p.add_argument("--student-algorithm", choices=INT4_ALGORITHMS, default="rtn", help="The int4 algorithm the student is quantized with.")
    p.add_argument("--text", default=WIKITEXT, help="The evaluation text file (perplexity, and the prompt of the speed runs).")
    p.add_argument("--data", default=SST2_DATA, help="Training text of the recipe (GPTQ calibration): a dataset with a 'sentence' column.")
    p.add_argument("--context", type=int, default=512, help="Tokens per perplexity window.")
    p.add_argument("--stride", type=int, default=512, help="Tokens between perplexity windows (= context: non-overlapping).")
    p.add_argument("--max-tokens", type=int, default=8192, help="Score the first N tokens of the text (0: all of it).")
    p.add_argument("--prompt-tokens", type=int, default=512, help="Prompt length of the speed runs.")
    p.add_argument("--new-tokens", type=int, default=128, help="Tokens generated per decode run.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs (medians are reported).")
    p.add_argument("--warmup", type=int, default=1, help="Untimed runs before timing.")
    add_threads_arg(p, help="Threads of PyTorch, ONNX Runtime and llama.cpp (fixed for every variant).")
    p.add_argument("--work-dir", default="outputs/bench-smollm2", help="Where the recipe writes the variants it builds.")
    p.add_argument("--quick", action="store_true", help="Smoke run on a tiny random Llama (built in --work-dir) with small windows and few tokens.")
    add_output_arg(p, str(REPO / "benchmarks" / "results" / "smollm2_135m"))
    return p.parse_args(argv)


def settings_of(a):
    from hfcompress.evaluation.generation import GenerationSettings

    if a.quick:
        return GenerationSettings(context=32, stride=32, max_tokens=256, prompt_tokens=16, new_tokens=4, warmup=1, repeats=1, threads=a.threads)
    return GenerationSettings(a.context, a.stride, a.max_tokens or None, a.prompt_tokens, a.new_tokens, a.warmup, a.repeats, a.threads)


def tiny_llama(directory: Path, text: str) -> str:
    """A random 2-layer Llama with a 512-token byte-level BPE tokenizer trained on ``text`` (once)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (directory / "config.json").is_file():
        return str(directory)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=512, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def recipe(a, teacher: str) -> dict:
    """The stages that build the hfcompress variants; names are the variants' keys."""
    stages = [
        {"stage": "export", "name": "onnx", "model": teacher},
        {"stage": "quantize", "name": "nf4", "model": teacher, "backend": "bitsandbytes", "bnb": {"bits": 4, "quant_type": "nf4"}},
        *({"stage": "quantize", "name": f"int4_{algo}", "model": "onnx", "onnx": weight_only(algo)} for algo in INT4_ALGORITHMS),
        {"stage": "export", "name": "genai_int4", "model": teacher, "backend": "genai", "genai": {"precision": "int4"}},
        # the genai build's fp32 graph quantized by hfcompress: HQQ's accuracy in onnxruntime-genai's generation loop
        # (genai's fused kernels reorder sums: its logits differ from PyTorch's by ~1e-4 on this 49k-token vocabulary, hence genai's own 1e-3)
        {"stage": "export", "name": "genai_fp32", "model": teacher, "backend": "genai", "genai": {"precision": "fp32"}, "atol": 1e-3},
        {"stage": "quantize", "name": "genai_int4_hqq", "model": "genai_fp32", "onnx": weight_only("hqq")},
    ]
    if a.student:
        stages += [
            {"stage": "export", "name": "student_onnx", "model": a.student},
            {"stage": "quantize", "name": "student_int4", "model": "student_onnx", "onnx": weight_only(a.student_algorithm)},
        ]
    data = {"path": a.data, "task": TEXT_GENERATION.name, "text_column": "sentence", "eval_split": "dev", "max_length": 128}
    return {"name": "bench-smollm2", "output_dir": a.work_dir, "data": data, "stages": stages}


def variants(a, teacher: str, outputs: dict) -> tuple[list[tuple], dict[str, str]]:
    """(key, role, GenerationVariant) in the issue's order for what exists, and why each other variant is skipped."""
    from hfcompress.evaluation.generation import GenerationVariant

    built = {key: str(path) for key, path in outputs.items()}
    candidates = [
        ("teacher", "teacher", "teacher fp32 (PyTorch)", teacher, CAUSAL_LM_LOADER, {"backend": "pytorch"}),
        ("onnx", "onnx", "teacher fp32 (ONNX Runtime, KV cache)", built.get("onnx"), CAUSAL_LM_LOADER, {"backend": "onnxruntime"}),
        ("llamacpp", "llamacpp", "llama.cpp Q4_1 GGUF", None if a.quick else a.gguf, LLAMACPP_LOADER, {}),
        ("nf4", "nf4", "bitsandbytes NF4 (PyTorch)", built.get("nf4"), CAUSAL_LM_LOADER, {"backend": "pytorch"}),
        *((f"int4_{algo}", "int4", f"hfcompress int4 {algo.upper()} (ONNX Runtime)", built.get(f"int4_{algo}"), CAUSAL_LM_LOADER,
           {"backend": "onnxruntime"}) for algo in INT4_ALGORITHMS),
        ("genai_int4", "int4", "hfcompress int4 (onnxruntime-genai's builder)", built.get("genai_int4"), CAUSAL_LM_LOADER, {"backend": "genai"}),
        ("genai_int4_hqq", "int4", "hfcompress int4 HQQ (onnxruntime-genai)", built.get("genai_int4_hqq"), CAUSAL_LM_LOADER, {"backend": "genai"}),
        ("student_int4", "student", f"hfcompress half-depth student int4 {a.student_algorithm.upper()} (ONNX Runtime)", built.get("student_int4"),
         CAUSAL_LM_LOADER, {"backend": "onnxruntime"}),
    ]
    found, skipped = [], {}
    for key, role, label, path, loader, kwargs in candidates:
        if path is None:
            skipped.setdefault(key, "no GGUF for the tiny model of --quick" if key == "llamacpp" else
                               "no --student given" if key == "student_int4" and not a.student else "its stage did not run")
        else:
            found.append((key, role, GenerationVariant(label, path, loader, kwargs)))
    return found, skipped


def check_goals(rows: list[dict], student_algorithm: str) -> dict:
    by_key = {r["key"]: r for r in rows}
    teacher, llamacpp = by_key.get("teacher"), by_key.get("llamacpp")
    int4 = [r for r in rows if r["role"] == "int4"]
    goals = {}
    if teacher and llamacpp and int4:
        # every int4 variant is checked; the best is the one meeting the most goals, then the lowest perplexity
        checked = [(goals_met(r["name"], {
            "perplexity_vs_teacher": r["perplexity"] / teacher["perplexity"],
            "decode_vs_llamacpp": r["decode_tokens_per_s"] / llamacpp["decode_tokens_per_s"],
        }, GOALS), r["perplexity"]) for r in int4]
        goals["best_int4"] = max(checked, key=lambda c: (sum(g["met"] for g in c[0]["goals"].values()), -c[1]))[0]
    student, int4_teacher = by_key.get("student_int4"), by_key.get(f"int4_{student_algorithm}")
    if teacher and student and int4_teacher:
        goals["student_int4"] = goals_met(student["name"], {
            "decode_vs_int4_teacher": student["decode_tokens_per_s"] / int4_teacher["decode_tokens_per_s"],
            "perplexity_vs_teacher": student["perplexity"] / teacher["perplexity"],
        }, STUDENT_GOALS)
    return goals


def tokenizer_check(results: dict[str, dict]) -> str:
    """Whether llama.cpp's tokenizer gave the transformers tokenizer's ids on the text (so both score the same windows)."""
    if "llamacpp" not in results or "teacher" not in results:
        return "not checked (llama.cpp or the teacher was not measured)"
    ours, theirs = results["teacher"], results["llamacpp"]
    if ours["tokens_sha256"] == theirs["tokens_sha256"]:
        return f"llama.cpp's tokenizer gives the transformers tokenizer's {ours['text_tokens']:,} ids on the text"
    return f"llama.cpp's tokenizer differs: {theirs['text_tokens']:,} ids against transformers' {ours['text_tokens']:,} (perplexities are over different windows)"


def main(argv=None) -> int:
    a = parse_args(argv)
    from hfcompress.evaluation import compression_row, write_compression_report
    from hfcompress.evaluation.generation import measure_in_subprocess
    from hfcompress.recipes.recipe import parse_recipe
    from hfcompress.recipes.runner import run_recipe

    settings = settings_of(a)
    text_path = Path(a.text)
    if not text_path.is_file():
        print(f"error: evaluation text {a.text} does not exist: give --text FILE (the WikiText-2 test split, see its README)", file=sys.stderr)
        return 1
    text = text_path.read_text(encoding="utf-8")
    try:
        if a.quick:
            teacher = tiny_llama(Path(a.work_dir) / "tiny-llama", text[:200_000])
        elif a.teacher is None or a.gguf is None:
            gguf, converted = smollm2_teacher()
            a.gguf, teacher = a.gguf or str(gguf), a.teacher or str(converted)
        else:
            teacher = a.teacher
        outputs = run_recipe(parse_recipe(recipe(a, teacher)), resume=True)
    except HFCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    found, missing = variants(a, teacher, outputs)
    rows, results = [], {}
    for key, role, variant in found:
        print(f"measuring {variant.name} ({repo_relative(variant.path)})")
        try:
            result = measure_in_subprocess(variant, text, settings)
        except HFCompressError as e:
            missing[key] = str(e)
            print(f"skipped {variant.name}: {e}")
            continue
        except Exception as e:  # a runtime that crashes on one variant: the others are still measured, the failure recorded
            traceback.print_exc()
            missing[key] = f"failed: {type(e).__name__}: {e}"
            continue
        results[key] = result
        extra = {k: result[k] for k in ("loss", "tokens_scored", "context", "stride", "load_s")}
        rows.append(compression_row(variant.name, {"size_mb": result["size_mb"]}, generation=result, key=key, role=role, path=repo_relative(variant.path),
                                    threads=settings.threads, cpu=result["hardware"]["cpu"], **extra))
    if not rows:
        print("nothing measured: " + "; ".join(f"{k}: {v}" for k, v in missing.items()), file=sys.stderr)
        return 1
    goals = check_goals(rows, a.student_algorithm)
    command = command_line(__file__, argv)
    tokens = tokenizer_check(results)
    notes = "\n".join(part for part in (
        *(goals_markdown(g) for g in goals.values()),
        "" if goals else "Goals: not checked (a variant they compare is missing).",
        f"Tokenizers: {tokens}.",
        "Skipped variants: " + "; ".join(f"`{k}`: {v}" for k, v in missing.items()) if missing else "",
        f"Reproduce: `{command}`",
    ) if part)
    out = Path(a.output)
    title = "SmolLM2-135M-Instruct: hfcompress against PyTorch, ONNX Runtime and llama.cpp" + (" (--quick, tiny random Llama)" if a.quick else "")
    report = write_compression_report(rows, out.parent, title=title, file_stem=out.name, notes=notes, metadata={
        "goals": goals, "command": command, "text": repo_relative(a.text), "settings": asdict(settings),
        "tokenizer_check": tokens, "skipped": missing,
    })
    print_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

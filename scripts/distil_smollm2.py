#!/usr/bin/env python
"""Distil SmolLM2-135M into a half-depth student (issue 21): the teacher's layers cut to 15 of 30, then per-token KD.

Training text: the SST-2 training sentences (never WikiText-2, which is the evaluation text), concatenated with
newlines and packed into blocks of --block-size tokens. The student keeps the teacher's embeddings, head and the
layers named by --layers, or --keep of them (default: 15 of 30, first and last kept, the rest spread evenly). Checkpoints every
--save-steps; rerunning the same command resumes from the last one.

    python -c "from hfcompress.utils.bench import smollm2_teacher; smollm2_teacher()"   # the GGUF (get.sh) and its conversion, once
    python scripts/distil_smollm2.py --teacher ~/.cache/hfcompress/smollm2/teacher --output outputs/smollm2-student-15l \
        --layers 0,2,4,6,8,10,12,15,17,19,21,23,25,27,29 --steps 120 --save-steps 20    # the benchmark's student
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from hfcompress.distillation import DistillationTrainer, DistillationTrainingArguments  # noqa: E402
from hfcompress.distillation.student import build_student_from_teacher, spread_layers  # noqa: E402
from hfcompress.evaluation.latency import cpu_info  # noqa: E402

SST2_TRAIN = Path(__file__).resolve().parents[1].parent / "shared/assets/data/sst2/train.tsv"


def packed_blocks(tokenizer, path: Path, block_size: int) -> Dataset:
    with open(path, newline="") as f:
        sentences = [row["sentence"].strip() for row in csv.DictReader(f, delimiter="\t")]
    ids = tokenizer("\n".join(sentences))["input_ids"]
    n = len(ids) // block_size
    blocks = np.asarray(ids[: n * block_size], dtype=np.int64).reshape(n, block_size)
    return Dataset.from_dict({"input_ids": blocks.tolist(), "attention_mask": np.ones_like(blocks).tolist()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="Teacher checkpoint (a directory or Hub id).")
    parser.add_argument("--output", required=True, help="Output directory of the student (checkpoints inside).")
    parser.add_argument("--keep", type=int, default=15, help="Layers the student keeps (first, last and the rest spread evenly: spread_layers).")
    parser.add_argument("--layers", default=None, help="Or the teacher layers to keep, comma-separated (e.g. 0,2,4,...,29).")
    parser.add_argument("--block-size", type=int, default=256, help="Tokens per training sequence.")
    parser.add_argument("--steps", type=int, default=300, help="Optimizer steps.")
    parser.add_argument("--batch-size", type=int, default=8, help="Sequences per step.")
    parser.add_argument("--lr", type=float, default=2e-4, help="Peak learning rate (cosine schedule, 5%% warm-up).")
    parser.add_argument("--alpha", type=float, default=0.2, help="Weight of the next-token cross-entropy; KD gets 1 - alpha.")
    parser.add_argument("--temperature", type=float, default=1.0, help="KD temperature.")
    parser.add_argument("--save-steps", type=int, default=25, help="Checkpoint interval (steps).")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="bf16 autocast; auto: on where the CPU has bf16 dot products (avx512_bf16), else fp32 (bf16 is slower than fp32 without them).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and "avx512_bf16" in cpu_info(args.threads)["isa"])
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    layers = [int(i) for i in args.layers.split(",")] if args.layers else spread_layers(args.keep, teacher.config.num_hidden_layers)
    student = build_student_from_teacher(teacher, layers)
    data = packed_blocks(tokenizer, SST2_TRAIN, args.block_size)
    print(f"student keeps layers {layers}; {len(data)} blocks of {args.block_size} tokens; bf16 {bf16}", flush=True)
    training = DistillationTrainingArguments(
        output_dir=args.output, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20), weight_decay=0.0, alpha=args.alpha,
        temperature=args.temperature, logging_steps=5, save_steps=args.save_steps, save_total_limit=2, bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to=[], seed=0, dataloader_num_workers=0,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training, train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=get_last_checkpoint(args.output))
    trainer.save_model(args.output)
    print(f"trained in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

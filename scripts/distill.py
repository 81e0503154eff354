#!/usr/bin/env python
"""Distil a teacher into a student, in the style of the transformers example scripts.

Every DistillationTrainingArguments field is a flag (``--alpha``, ``--temperature``, ``--teacher_cache_dir``, ...).
On GPUs, ``accelerate launch --num_processes N scripts/distill.py ...``; on a CPU-only machine, launch through
torchrun with ``--multi_gpu`` and add ``--use_cpu true`` so accelerate picks the gloo backend:

    accelerate launch --multi_gpu --num_processes 2 scripts/distill.py --use_cpu true \\
        --teacher_model_name_or_path outputs/sst2-quickstart/teacher --student_layers 0 2 4 \\
        --dataset ../shared/assets/data/sst2 --eval_split dev --output_dir outputs/student --num_train_epochs 1
"""

import sys
from dataclasses import dataclass, field
from typing import Optional

from transformers import HfArgumentParser

from hfcompress import DistillationTrainer, DistillationTrainingArguments, build_student_from_teacher
from hfcompress.data import DataConfig, TaskData
from hfcompress.errors import ConfigError, HFCompressError
from hfcompress.modeling import load_model, load_tokenizer


@dataclass
class StudentArguments:
    student_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Student checkpoint (default: cut the teacher)."})
    student_layers: Optional[list[int]] = field(default=None, metadata={"help": "Teacher layers the student keeps, e.g. 0 2 4."})


@dataclass
class DataArguments:
    dataset: str = field(metadata={"help": "Hub dataset id or local directory."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub config name (e.g. sst2)."})
    train_split: str = "train"
    eval_split: str = "validation"
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 128
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None


def run(argv=None) -> int:
    student_args, data_args, args = HfArgumentParser((StudentArguments, DataArguments, DistillationTrainingArguments)).parse_args_into_dataclasses(argv)
    if not args.teacher_model_name_or_path:
        raise ConfigError("--teacher_model_name_or_path is required")
    data = TaskData(
        DataConfig(
            path=data_args.dataset, name=data_args.dataset_config, train_split=data_args.train_split, eval_split=data_args.eval_split,
            text_column=data_args.text_column, label_column=data_args.label_column, max_length=data_args.max_length,
            max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples,
        ),
        seed=args.seed,
    )
    teacher = load_model(args.teacher_model_name_or_path, data.cfg.task, data.num_labels, data.label_display_names())
    tokenizer = load_tokenizer(args.teacher_model_name_or_path)
    if student_args.student_model_name_or_path:
        student = load_model(student_args.student_model_name_or_path, data.cfg.task, data.num_labels, data.label_display_names())
        origin = f"`{student_args.student_model_name_or_path}`" + (f", layers {student_args.student_layers}" if student_args.student_layers else "")
    else:
        student, origin = teacher, f"the teacher's layers {student_args.student_layers}" if student_args.student_layers else "the teacher"
    if student_args.student_layers:
        student = build_student_from_teacher(student, student_args.student_layers)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data.tokenize(tokenizer, data.cfg.train_split),
        eval_dataset=data.tokenize(tokenizer, data.cfg.eval_split),
        data_collator=data.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=data.task.trainer_compute_metrics(num_labels=data.num_labels),
        teacher_name=args.teacher_model_name_or_path,
        student_origin=origin,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        trainer.write_artifacts(args.output_dir)  # distillation.json and its summary, for hfcompress card
    return 0


if __name__ == "__main__":
    try:
        sys.exit(run())
    except HFCompressError as e:
        print(f"distill: error: {e}", file=sys.stderr)
        sys.exit(2)

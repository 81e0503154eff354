from .cache import TeacherLogitCache
from .config import DistillationTrainingArguments, parse_layer_map, uniform_layer_map
from .losses import distillation_loss_sums
from .student import build_student_from_teacher
from .trainer import DistillationTrainer

__all__ = [
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "TeacherLogitCache",
    "build_student_from_teacher",
    "distillation_loss_sums",
    "parse_layer_map",
    "uniform_layer_map",
]

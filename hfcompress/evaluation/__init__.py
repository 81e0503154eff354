from .harness import evaluate_pytorch, predict_pytorch

__all__ = ["evaluate_pytorch", "predict_pytorch"]

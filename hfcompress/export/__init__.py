from .onnx import ExportConfig, export_onnx, graph_signature
from .optimize import optimize_onnx
from .parity import ParityError, check_parity

__all__ = ["ExportConfig", "ParityError", "check_parity", "export_onnx", "graph_signature", "optimize_onnx"]

"""Inspectors: P(aligned | question, answer) per criterion, on PyTorch or ONNX Runtime."""
from squad.inspector.classifier import Inspector

__all__ = ["Inspector"]

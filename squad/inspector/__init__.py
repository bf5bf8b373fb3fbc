"""Inspectors: P(aligned | question, answer) per criterion, on PyTorch or ONNX Runtime."""

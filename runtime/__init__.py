"""Torch-free runtime: numpy around ONNX Runtime sessions."""

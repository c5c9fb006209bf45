"""acestep-edge: an offline ONNX runtime for ACE-Step v1.5 XL Base."""

__version__ = "0.1.0"

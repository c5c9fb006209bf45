"""ONNX export of every graph into a manifest-described bundle."""

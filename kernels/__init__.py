"""Hot ops defined once: torch function, ONNX lowering, numpy reference."""

"""`acestep-edge bench`: stage timings, FLOP rates and memory of the ONNX runtime, optionally beside PyTorch.

The ONNX side drives the runtime `Pipeline` and never imports torch; `torch_side` (imported only for
`--torch`) times the PyTorch reference on the same weights, noise, steps and threads.
"""

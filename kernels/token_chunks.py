"""Token-chunk markers: the start and end of a token-wise region (the DiT's MLP) that the export runs in chunks.

`mark(x, "begin")` / `mark(y, "end")` are the identity in eager torch. Inside
`kernels.lowering.use_lowering(..., mlp_chunk=n)` with n > 0 they trace to ``acestep::chunk_begin`` /
``acestep::chunk_end`` custom ops (`token_chunks_onnx.py`), which become ``TokenChunkBegin`` /
``TokenChunkEnd`` nodes of the ``ai.acestep.mark`` domain. They only mark: before the graph is
saved, `export/token_chunks.py` moves everything between a pair into a ``Scan`` over token chunks
(after the precision passes, which therefore see and rewrite the region's MatMuls as usual) and
removes the markers. The region must be token-wise: row i of its output depends on row i of its
input only (the MLP: linear layers and element-wise ops), so chunking changes nothing but the size
of its intermediates.
"""

from __future__ import annotations

from acestep_edge.kernels.lowering import current_mode, mlp_chunk

DOMAIN = "ai.acestep.mark"
OPS = {"begin": "TokenChunkBegin", "end": "TokenChunkEnd"}


def mark(x, which: str):
    """Identity; under a lowering with token chunks on, the `which` ('begin', 'end') marker of a region [B, L, D]."""
    if current_mode() is None or not mlp_chunk() or x.dim() != 3:
        return x
    import torch

    from acestep_edge.kernels import token_chunks_onnx  # noqa: F401  (registers the custom ops)

    return getattr(torch.ops.acestep, f"chunk_{which}")(x)

"""acestep-edge: an offline ONNX runtime for ACE-Step v1.5 XL Base."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# The tiny random-weight bundle and the example request shipped inside the package (`acestep-edge demo`).
DEMO_BUNDLE = _Path(__file__).resolve().parent / "demo_bundle"
DEMO_REQUEST = _Path(__file__).resolve().parent / "demo_request.json"

# In a source checkout the subpackages live beside this folder (models/, kernels/, export/,
# runtime/) and are installed under acestep_edge by pyproject's package-dir. When Python finds
# this folder first (e.g. `python -m pytest` from the repository root), point the package at the
# checkout so `acestep_edge.models` etc. still resolve.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "runtime" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - package __path__

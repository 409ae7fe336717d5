"""nrc: measure Deep Neural Regression Collapse in saved checkpoints, layer by layer.

Python use::

    from nrc_cli import analyze
    results = analyze("model.safetensors", "data.npz")
    results.to_frame()
"""

from __future__ import annotations

from nrc_cli._version import __version__
from nrc_cli.errors import NrcError
from nrc_cli.results import Results

__all__ = ["NrcError", "Results", "__version__", "analyze"]


def analyze(checkpoint: str, data: str, **options) -> Results:
    """Analyze ``checkpoint`` on ``data``; ``options`` are the fields of
    :class:`nrc_cli.options.AnalysisOptions` (``rank``, ``batch_size``, ``arch``, ...)."""
    from nrc_cli.options import AnalysisOptions
    from nrc_cli.pipeline import run

    return run(str(checkpoint), str(data), AnalysisOptions(**options))

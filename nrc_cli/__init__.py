"""nrc: measure Deep Neural Regression Collapse in saved checkpoints, layer by layer (and, for
classifiers, Deep Neural Collapse: docs/classification.md).

Python use::

    from nrc_cli import analyze
    results = analyze("model.safetensors", "data.npz")
    results.to_frame()
"""

from __future__ import annotations

# First, so that the window over which other processes' CPU use is read (the default thread
# count, nrc_cli._threads.others_busy) spans the imports that follow.
from nrc_cli import _threads  # noqa: F401  (torch-free)
from nrc_cli._version import __version__
from nrc_cli.errors import NrcError
from nrc_cli.results import Results

__all__ = ["CollapseMonitor", "History", "NrcError", "Results", "__version__", "analyze"]


def __getattr__(name: str):
    # CollapseMonitor imports torch; `import nrc_cli` stays light until it is asked for.
    if name == "CollapseMonitor":
        from nrc_cli.monitor import CollapseMonitor

        return CollapseMonitor
    if name == "History":
        from nrc_cli.results.history import History

        return History
    raise AttributeError(f"module 'nrc_cli' has no attribute {name!r}")


def analyze(checkpoint_or_module, data, *, forward=None, **options) -> Results:
    """Deep NRC of a model on a data set, layer by layer: what ``nrc analyze`` computes.

    Parameters
    ----------
    checkpoint_or_module : str, os.PathLike or torch.nn.Module
        A checkpoint (``.safetensors``, ``.pt``/``.pth``, a model folder), built as ``nrc
        analyze`` builds it; or a module (run in eval mode; never changed).
    data : str, os.PathLike, (x, y) or iterable of (x, y)
        A data file (``.npz``, ``.toml`` spec); an ``(x, y)`` pair of arrays or tensors; or an
        iterable of ``(x, y)`` batches (a list or a DataLoader; a generator allows one pass).
    forward : callable(model, batch) -> (preds, target[, segments]), optional
        Batches of any kind (a PyTorch Geometric ``Batch``, a dict, a custom object): each is
        run by ``forward``, which returns the prediction (or None), the targets and, for
        layers whose rows are parts of samples, their segments (docs/graphs.md). The model
        must then be a module.
    **options
        The fields of :class:`nrc_cli.options.AnalysisOptions`, typed: ``rank=2``,
        ``batch_size=256``, ``arch_kwargs={"width": 64}``, ``memory_budget="4GB"``, ...

    Returns
    -------
    Results

    Examples
    --------
    >>> from nrc_cli import analyze
    >>> results = analyze("sample_checkpoints/mlp_wd.safetensors", "sample_checkpoints/lowrank.npz")
    >>> results.summary["first_collapsed_layer"]
    'net.2'
    """
    from nrc_cli.options import AnalysisOptions
    from nrc_cli.pipeline import run, run_forward

    if forward is not None:
        return run_forward(checkpoint_or_module, data, forward, AnalysisOptions(**options))
    results = run(checkpoint_or_module, data, AnalysisOptions(**options))
    assert results is not None  # only a rank of a process group gets None
    return results

"""Collapse measured inside the trainers people use.

* :mod:`nrc_cli.integrations.lightning`: ``CollapseCallback`` for PyTorch Lightning (the
  ``[lightning]`` extra);
* :mod:`nrc_cli.integrations.transformers`: ``CollapseCallback`` for the Hugging Face
  ``Trainer`` (the ``[hf]`` extra).

Each module imports its framework when it is imported; this package and ``import nrc_cli``
import neither.
"""

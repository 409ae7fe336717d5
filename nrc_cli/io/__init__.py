"""Files in, checked in-memory objects out: checkpoints and data."""

"""Whether a device multiplies float64 slowly enough that ``--precision mixed`` is worth it.

Exact accumulation forms one p×p float64 product per layer and batch. Datacenter GPUs
(A100, H100) multiply float64 at about their float32 rate, so that costs little; most other
cards (consumer cards, L4, A10) run float64 at 1/32–1/64 of the float32 rate, and there exact
accumulation can take many times the forward pass it measures. :func:`matmul_rates` measures
both rates once per device (two 512×512 products each, a few milliseconds) and
:func:`precision_hint` turns them into a one-line suggestion; the decision itself,
:func:`float64_is_slow`, is a pure function of the two rates.
"""

from __future__ import annotations

import functools

import torch

# float32 ÷ float64 matmul rate above which the hint suggests mixed precision. Datacenter cards
# measure about 1–2, consumer and inference cards 32–64; a CPU with AVX-512 about 2.
SLOW_FLOAT64_RATIO = 8.0
_SIDE = 512
_REPEATS = 4


def float64_is_slow(float32_rate: float, float64_rate: float) -> bool:
    """Whether float64 products run at less than 1/``SLOW_FLOAT64_RATIO`` of the float32 rate.

    Rates in FLOP/s; a rate that is not positive (a failed measurement) gives False.
    """
    if not (float32_rate > 0 and float64_rate > 0):
        return False
    return float32_rate / float64_rate >= SLOW_FLOAT64_RATIO


@functools.lru_cache(maxsize=8)
def matmul_rates(device: torch.device) -> tuple[float, float]:
    """(float32, float64) matrix-multiply rates of a CUDA ``device`` in FLOP/s, TF32 off.

    Measured once per device and process: one warm-up and ``_REPEATS`` products of
    ``_SIDE``×``_SIDE`` matrices per dtype, timed with CUDA events (a few milliseconds even
    where float64 is 64 times slower). The random number generators are not touched.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"matmul_rates: expected a CUDA device, got {device}")
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    rates = []
    try:
        with torch.cuda.device(device):
            for dtype in (torch.float32, torch.float64):
                a = torch.full((_SIDE, _SIDE), 0.5, dtype=dtype, device=device)
                out = torch.mm(a, a)  # warm-up: library handle, kernel choice
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(_REPEATS):
                    torch.mm(a, a, out=out)
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
                rates.append(2.0 * _SIDE**3 * _REPEATS / seconds if seconds > 0 else 0.0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rates[0], rates[1]


def precision_hint(
    device: torch.device,
    precision: str,
    rates: tuple[float, float] | None = None,
) -> str | None:
    """A one-line hint suggesting ``--precision mixed``, or None.

    Only for an exact-precision run on a CUDA device whose float64 rate is much lower than its
    float32 rate (:func:`float64_is_slow`). ``rates`` = (float32, float64) FLOP/s; measured by
    :func:`matmul_rates` when not given. Nothing is measured for a CPU device or a mixed run.
    """
    device = torch.device(device)
    if device.type != "cuda" or precision != "exact":
        return None
    f32, f64 = matmul_rates(device) if rates is None else rates
    if not float64_is_slow(f32, f64):
        return None
    return (
        f"hint: this GPU multiplies float64 at 1/{f32 / f64:.0f} of its float32 rate; "
        "--precision mixed is faster here (float32 products, every metric within "
        "1e-5 + 1e-4·|exact|; see docs/metrics.md)"
    )

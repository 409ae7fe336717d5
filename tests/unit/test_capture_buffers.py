"""Pooling into buffers reused across batches (:class:`nrc_cli.capture.Buffers`).

The reused buffers must give the same numbers, bit for bit, as pooling into new arrays, at
every batch size (a smaller last batch takes a prefix), and a Capture must hand each layer the
same memory from one batch to the next (the point: no per-batch allocations on the CPU).
"""

from __future__ import annotations

import torch
from torch import nn

from nrc_cli.capture import Buffers, Capture, pool, weight_layers


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, 5, 3)
    lin = nn.Linear(6, 2)
    yield conv, torch.randn(70, 3, 9, 11, generator=g), None
    yield conv, torch.randn(70, 3, 9, 11, generator=g, dtype=torch.float64), None
    yield conv, torch.randn(9, 3, 130, 140, generator=g), None  # several blocks of samples
    yield lin, torch.randn(40, 7, 6, generator=g).to(torch.bfloat16), None
    mask = torch.rand(40, 7, generator=g) > 0.3
    yield lin, torch.randn(40, 7, 6, generator=g), mask
    yield lin, torch.randn(40, 7, 6, generator=g, dtype=torch.float64), mask


def test_pooling_into_buffers_gives_the_same_bits():
    buffers = Buffers()
    for seed in (0, 1):  # the second round reuses (and, batch by batch, shrinks) the buffers
        for i, (module, x, mask) in enumerate(_inputs(seed)):
            for rows in (x.shape[0], x.shape[0] // 3):  # a smaller last batch: a prefix view
                m = None if mask is None else mask[:rows]
                want = pool(module, x[:rows], m)
                got = pool(module, x[:rows], m, buffers=buffers, key=f"layer{i}")
                assert got.dtype == torch.float64 and torch.equal(got, want)
                # the float64 sums of the float32 inputs, against a dense reference
                dims = (1,) if isinstance(module, nn.Linear) else (2, 3)
                ref = x[:rows].double()
                if m is not None:
                    ref = (ref * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
                else:
                    ref = ref.mean(dim=dims)
                torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_capture_reuses_each_layers_memory_across_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def keep(name, z):  # z itself kept alive, so that new arrays could not share an address
        seen.setdefault(name, []).append((z, z.clone()))

    layers = weight_layers(model)
    x = torch.randn(3, 16, 3, 8, 8)
    with Capture(layers, keep, root=model, copy_views=True), torch.no_grad():
        for batch in x:
            model(batch)
    for name, got in seen.items():
        assert len({z.data_ptr() for z, _ in got}) == 1, name  # one buffer for all three batches
    # and the values are each batch's own
    flat = nn.Flatten()(torch.relu(model[0](x[2])))
    assert torch.equal(seen["3"][2][1], flat)
    assert torch.equal(seen["0"][1][1], x[1].double().mean(dim=(2, 3)))

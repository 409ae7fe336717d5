"""A real pretrained graph network: CHGNet (its weights ship inside its wheel).

CHGNet's layers see four kinds of rows: atoms, directed edges of the atom graph, bonds and
angles; its composition model and readout see structures. With each kind declared as
segments (counts per structure), every Linear layer that runs is measured per structure.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import dense_layer

from nrc_cli import CollapseMonitor
from nrc_cli.segments import Segments

chgnet_model = pytest.importorskip("chgnet.model")
pymatgen_core = pytest.importorskip("pymatgen.core")

PAIRS = [("Na", "Cl"), ("Li", "F"), ("K", "Br"), ("Mg", "O")]


def _structures(n: int, offset: int = 0):
    Structure, Lattice = pymatgen_core.Structure, pymatgen_core.Lattice
    out = []
    for i in range(offset, offset + n):
        a = 4.0 + 0.15 * (i % 7)
        s = Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(a), list(PAIRS[i % 4]), [[0, 0, 0], [0.5, 0.5, 0.5]]
        )
        if i % 3 == 0:
            s.make_supercell([1, 1, 2])
        out.append(s)
    return out


def _segments(graphs) -> list[Segments]:
    """The four kinds of rows of a CHGNet batch, as counts per structure."""

    def counts(rows):
        return torch.tensor([rows(g) for g in graphs])

    return [
        Segments(counts=counts(lambda g: g.atomic_number.shape[0]), kind="atom"),
        Segments(counts=counts(lambda g: g.atom_graph.shape[0]), kind="edge"),
        Segments(counts=counts(lambda g: g.undirected2directed.shape[0]), kind="bond"),
        Segments(counts=counts(lambda g: g.bond_graph.shape[0]), kind="angle"),
    ]


@pytest.fixture(scope="module")
def chgnet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = chgnet_model.CHGNet.load(verbose=False)
    return model.eval()


def test_every_linear_layer_of_chgnet_is_measured_per_structure(chgnet):
    batches = [[chgnet.graph_converter(s) for s in _structures(4, 4 * i)] for i in range(2)]
    monitor = CollapseMonitor(chgnet, exclude=["site_wise"])  # runs for site energies only
    with torch.no_grad():
        # What the head regresses: the energy without the composition model's reference.
        ys = [
            (chgnet(graphs, task="e")["e"] - chgnet.composition_model(graphs)).reshape(-1, 1)
            for graphs in batches
        ]
    with monitor, torch.no_grad():
        for graphs, y in zip(batches, ys, strict=True):
            # The prediction API calls forward() itself; the batch ends at update().
            chgnet.predict_graph(graphs, task="e", batch_size=len(graphs))
            monitor.update(y, None, segments=_segments(graphs))
    targets = [y.double().numpy() for y in ys]
    results = monitor.compute()
    linear = [n for n, m in chgnet.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 51
    assert [r["layer"] for r in results.layers] != []
    assert {r["layer"] for r in results.layers} == set(linear) - {"site_wise"}
    kinds = {p["layer"]: p["rows"] for p in results.plan["layers"]}
    assert kinds["composition_model.fc"] == "sample"
    assert kinds["bond_embedding"] == "bond"
    assert kinds["angle_embedding"] == "angle"
    assert kinds["atom_conv_layers.0.twoBody_atom.mlp_core.layers.0"] == "edge"
    assert kinds["mlp.layers.0"] == "atom"
    assert results.summary["n_samples"] == 8
    assert all(r["nrc1_noise"] is not None for r in results.layers)

    # Three layers, one per kind of rows, against their inputs pooled by hand (float64).
    names = ["bond_embedding", "atom_conv_layers.0.mlp_out.layers.1", "mlp.layers.0"]
    modules = dict(chgnet.named_modules())
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    hooks = [
        modules[n].register_forward_pre_hook(
            lambda m, a, n=n: seen[n].append(a[0].double().numpy()) and None
        )
        for n in names
    ]
    pooled: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for graphs in batches:
            for n in names:
                seen[n].clear()
            chgnet(graphs, task="e")
            segs = {s.kind: s for s in _segments(graphs)}
            for n, kind in zip(names, ("bond", "atom", "atom"), strict=True):
                counts = segs[kind].counts.numpy()
                owner = np.repeat(np.arange(len(graphs)), counts)
                sums = np.zeros((len(graphs), seen[n][0].shape[1]))
                np.add.at(sums, owner, seen[n][0])
                pooled[n].append(sums / counts[:, None])
    for h in hooks:
        h.remove()
    rows = {r["layer"]: r for r in results.layers}
    y = np.concatenate(targets)
    for n in names:
        want = dense_layer(
            np.concatenate(pooled[n]), y, modules[n].weight.detach().double().numpy(), 1
        )
        assert rows[n]["nrc1_noise"] == pytest.approx(want["nrc1_noise"], rel=1e-9, abs=1e-12)
        assert rows[n]["nrc2_cka"] == pytest.approx(want["nrc2_cka"], rel=1e-9, abs=1e-12)

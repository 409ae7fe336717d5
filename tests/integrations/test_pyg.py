"""PyTorch Geometric: graph regressors measured per graph (the optional extra ``[pyg]``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import dense_layer
from torch import nn

from integrations.docs_examples import REPO, run_script
from nrc_cli import CollapseMonitor, analyze

pyg = pytest.importorskip("torch_geometric")
from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402
from torch_geometric.nn import GCNConv, GINConv, global_mean_pool  # noqa: E402

METRICS = ("nrc1_noise", "nrc2_cka", "nrc2_cka_signal", "nrc3_alignment", "nrc4_probe_mse")


def _graphs(n: int, seed: int) -> list[Data]:
    """Random graphs whose target is a function of their mean node features and size."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        nodes = int(torch.randint(4, 10, (), generator=g))
        x = torch.randn(nodes, 4, generator=g)
        src = torch.randint(0, nodes, (2 * nodes,), generator=g)
        dst = torch.randint(0, nodes, (2 * nodes,), generator=g)
        edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
        mean = x.mean(0)
        y = torch.stack([mean[0] + mean[1], torch.tanh(mean[2]) * nodes / 10]).reshape(1, 2)
        out.append(Data(x=x, edge_index=edge_index, y=y))
    return out


class GraphRegressor(nn.Module):
    """GCN and GIN layers on the nodes, an edge MLP on the edges, a readout on the graphs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gcn = GCNConv(4, 16)
        self.gin = GINConv(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)))
        self.edge = nn.Linear(32, 8)
        self.head = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x, edge_index, batch):
        h = torch.relu(self.gcn(x, edge_index))
        h = torch.relu(self.gin(h, edge_index))
        e = torch.relu(self.edge(torch.cat([h[edge_index[0]], h[edge_index[1]]], dim=1)))
        graphs = int(batch.max()) + 1
        per_graph = torch.zeros(graphs, 8).index_add_(0, batch[edge_index[0]], e)
        return self.head(torch.cat([global_mean_pool(h, batch), per_graph], dim=1))


@pytest.fixture(scope="module")
def trained():
    model = GraphRegressor()
    train = DataLoader(_graphs(160, seed=1), batch_size=32, shuffle=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(15):
        for b in train:
            opt.zero_grad()
            loss = ((model(b.x, b.edge_index, b.batch) - b.y) ** 2).mean()
            loss.backward()
            opt.step()
    return model.eval(), _graphs(96, seed=2)


def _reference(model: GraphRegressor, batches: list[Batch]) -> dict:
    """Every layer's input rows, pooled per graph by hand in float64 (numpy)."""
    inputs: dict[str, list[np.ndarray]] = {}
    kinds = {"gcn.lin": "node", "gin.nn.0": "node", "gin.nn.2": "node", "edge": "edge"}
    kinds.update({"head.0": "graph", "head.2": "graph"})
    modules = dict(model.named_modules())
    hooks = [
        modules[name].register_forward_pre_hook(
            lambda m, args, name=name: (
                inputs.setdefault(name, []).append(args[0].double().numpy()) and None
            )
        )
        for name in kinds
    ]
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    ys, preds = [], []
    with torch.no_grad():
        for b in batches:
            inputs.clear()
            preds.append(model(b.x, b.edge_index, b.batch).double().numpy())
            ys.append(b.y.double().numpy())
            owners = {
                "node": b.batch.numpy(),
                "edge": b.batch[b.edge_index[0]].numpy(),
                "graph": np.arange(b.num_graphs),
            }
            for name, kind in kinds.items():
                rows, owner = inputs[name][0], owners[kind]
                sums = np.zeros((b.num_graphs, rows.shape[1]))
                np.add.at(sums, owner, rows)
                pooled[name].append(sums / np.bincount(owner, minlength=b.num_graphs)[:, None])
    for h in hooks:
        h.remove()
    y = np.concatenate(ys)
    model_mse = float(np.mean((np.concatenate(preds) - y) ** 2))
    return {
        name: dense_layer(
            np.concatenate(z), y, modules[name].weight.detach().double().numpy(), 2, model_mse
        )
        for name, z in pooled.items()
    }


def test_a_trained_graph_regressor_matches_a_dense_reference_pooled_by_hand(trained):
    model, graphs = trained
    batches = list(DataLoader(graphs, batch_size=24))
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        for b in batches:
            monitor.update(b.y, model(b.x, b.edge_index, b.batch), segments=b)
    results = monitor.compute()
    want = _reference(model, batches)
    rows = {r["layer"]: r for r in results.layers}
    assert set(rows) == set(want)  # PyG's own Linear (inside GCNConv) is a weight layer
    for name, ref in want.items():
        for metric in METRICS:
            assert rows[name][metric] == pytest.approx(ref[metric], rel=1e-9, abs=1e-12), (
                name,
                metric,
            )
    kinds = {p["layer"]: p["rows"] for p in results.plan["layers"]}
    assert kinds == {
        "gcn.lin": "node",
        "gin.nn.0": "node",
        "gin.nn.2": "node",
        "edge": "edge",
        "head.0": "graph",
        "head.2": "graph",
    }
    assert rows["edge"]["note"].endswith("rows of edges pooled per sample")
    assert results.summary["n_samples"] == 96

    # The same numbers from analyze(), with the model run by a function of the batch.
    got = analyze(model, batches, forward=lambda m, b: (m(b.x, b.edge_index, b.batch), b.y, b))
    assert got.layers == results.layers


def test_equal_node_and_edge_counts_in_a_batch_warn(trained):
    model, _ = trained
    # One graph of 3 nodes and 3 directed edges: as many node rows as edge rows.
    ring = Data(
        x=torch.randn(3, 4), edge_index=torch.tensor([[0, 1, 2], [1, 2, 0]]), y=torch.zeros(1, 2)
    )
    batches = [Batch.from_data_list([ring, ring]), *DataLoader(_graphs(20, seed=3), batch_size=10)]
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        for b in batches:
            monitor.update(b.y, model(b.x, b.edge_index, b.batch), segments=b)
    warnings = monitor.compute().summary["warnings"]
    assert any("as many as the node and the edge rows of this batch" in w for w in warnings)


def test_a_graph_batch_without_segments_is_refused_with_the_counts(trained):
    model, graphs = trained
    b = Batch.from_data_list(graphs[:8])
    monitor = CollapseMonitor(model)
    with monitor, torch.no_grad():
        out = model(b.x, b.edge_index, b.batch)
        with pytest.raises(Exception, match=rf"layer 'gcn.lin' sees {b.num_nodes} rows for 8"):
            monitor.update(b.y, out)


def test_the_graphs_page_example_runs_as_written(tmp_path):
    text = (REPO / "docs" / "graphs.md").read_text(encoding="utf-8")
    text = text[text.index("## A complete PyTorch Geometric example\n") :]
    source = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    done = run_script(tmp_path, source, timeout=300)
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:4]] == [
        ["conv1.lin", "rows=node"],
        ["conv2.lin", "rows=node"],
        ["head.0", "rows=graph"],
        ["head.2", "rows=graph"],
    ], done.stdout
    assert lines[4].startswith("first collapsed:")

"""Tests for :mod:`nrc_cli.distributed`: launch variables, shares, and 2 real ranks over gloo
on 127.0.0.1 (reduction equals one stream; an error on one rank ends both; a silent rank is a
timeout, not a hang)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ranks import run_ranks
from torch import nn

from nrc_cli import CollapseMonitor
from nrc_cli.accumulate.classes import Agreement, ClassMoments, ClassSketch, NearestClassMean
from nrc_cli.accumulate.moments import CrossMoments, NormalizedGram, SquaredError
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.distributed import launch_from_env, rank_device, share, steps
from nrc_cli.errors import ConfigError
from nrc_cli.linalg import gaussian_test_matrix

TORCHRUN = {
    "WORLD_SIZE": "2",
    "RANK": "1",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


# ------------------------------------------------------------------------------------------------
# The launch and the shares
# ------------------------------------------------------------------------------------------------


def test_launch_is_read_from_the_torchrun_variables():
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    launch = launch_from_env({**TORCHRUN, "NRC_DIST_TIMEOUT": "30"})
    assert (launch.rank, launch.world_size, launch.local_rank) == (1, 2, 1)
    assert launch.master == "127.0.0.1:29500" and launch.timeout == 30


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"RANK": None}, "RANK should be a whole number >= 0: it is not set"),
        ({"RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"MASTER_PORT": None}, "MASTER_PORT is not set"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE should be a whole number"),
        ({"NRC_DIST_TIMEOUT": "0"}, "NRC_DIST_TIMEOUT: expected a number of seconds > 0"),
        ({"NRC_DIST_TIMEOUT": "soon"}, "found 'soon'"),
    ],
)
def test_launch_variables_that_do_not_fit_are_usage_errors(change, match):
    env = {**TORCHRUN, **change}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError, match=match):
        launch_from_env(env)


def test_each_rank_takes_its_own_device():
    launch = launch_from_env(TORCHRUN)
    assert rank_device("cpu", launch) == "cpu"
    assert rank_device("cuda", launch) == "cuda:1"
    assert rank_device("auto", launch) == ("cuda:1" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device cuda:0: under torchrun each rank takes"):
        rank_device("cuda:0", launch)


@pytest.mark.parametrize(("n", "b", "world"), [(100, 7, 2), (100, 7, 3), (5, 10, 2), (64, 8, 8)])
def test_shares_are_contiguous_runs_of_whole_batches(n, b, world):
    parts = [share(n, b, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(parts[r][1] == parts[r + 1][0] for r in range(world - 1))
    assert all(start % b == 0 for start, stop in parts if stop > start)
    counts = [-(-(stop - start) // b) for start, stop in parts]
    assert max(counts) == steps(n, b, world) and max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True) and counts[0] >= 1


# ------------------------------------------------------------------------------------------------
# Two ranks: reduction, errors, timeouts
# ------------------------------------------------------------------------------------------------

N, P, T = 301, 12, 3


def data(n=N):
    """Features far from 0 (the shift matters) and targets, float64."""
    g = torch.Generator().manual_seed(5)
    z = 1000.0 + torch.randn(n, P, generator=g, dtype=torch.float64) @ torch.randn(
        P, P, generator=g, dtype=torch.float64
    )
    y = -50.0 + torch.randn(n, T, generator=g, dtype=torch.float64)
    return z, y


def accumulators():
    omega = gaussian_test_matrix(P, 5, seed=3)
    return CrossMoments(), NormalizedGram(), SquaredError(), CovarianceSketch(omega)


def feed(accs, z, y, batch):
    exact, gram, sse, sketch = accs
    for start in range(0, len(z), batch):
        zb, yb = z[start : start + batch], y[start : start + batch]
        exact.update(zb, yb)
        gram.update(zb)
        sse.update(zb[:, :T], yb)
        sketch.update(zb, yb)


def summary(accs) -> dict:
    exact, gram, sse, sketch = accs
    m, s = exact.compute(), sketch.compute()
    return {
        "n": m.n,
        "mean_z": m.mean_z.tolist(),
        "cov_z": m.cov_z.tolist(),
        "cov_zy": m.cov_zy.tolist(),
        "cov_y": m.cov_y.tolist(),
        "gram": gram.compute().tolist(),
        "mse": sse.compute(),
        "sketch": s.sketch.tolist(),
        "sketch_cov_zy": s.moments.cov_zy.tolist(),
        "trace": s.trace,
    }


REDUCE_SCRIPT = """
import json, sys
sys.path[:0] = {tests!r}
from test_distributed import accumulators, data, feed, feed_monitor, monitored, summary
from nrc_cli.distributed import launch_from_env, process_group, share

n, batch = {n}, {batch}
launch = launch_from_env()
z, y = data(n)
start, stop = share(n, batch, launch.rank, launch.world_size)
accs = accumulators()
feed(accs, z[start:stop], y[start:stop], batch)
with process_group(launch, "cpu") as group:
    for acc in accs:
        group.reduce(acc)
    json.dump(summary(accs), open("rank%d.json" % launch.rank, "w"))
    # The public route: a monitor per rank on its share, then all_reduce.
    model, monitor = monitored()
    feed_monitor(model, monitor, z[start:stop], y[start:stop], batch)
    monitor.all_reduce(group)
    # As torch's own collectives take it: the default group (None), or a ProcessGroup.
    import torch.distributed as dist
    for name, pg in (("default", None), ("new", dist.new_group([0, 1]))):
        model, other = monitored()
        feed_monitor(model, other, z[start:stop], y[start:stop], batch)
        other.all_reduce(pg)
        json.dump(other.compute().to_dict(), open("%s%d.json" % (name, launch.rank), "w"))
json.dump(monitor.compute().to_dict(), open("monitor%d.json" % launch.rank, "w"))
"""


def run_script(tmp_path, name: str, template: str, **fields) -> None:
    """Write ``template`` (formatted with ``fields`` and ``tests``, the paths of this module and
    of helpers.py) as ``name`` and run it on two ranks; both must succeed."""
    here = Path(__file__).resolve().parent
    script = tmp_path / name
    script.write_text(template.format(tests=[str(here), str(here.parent)], **fields))
    ended, _ = run_ranks([str(script)], cwd=tmp_path, timeout=120)
    for e in ended:
        assert e.returncode == 0, e.stderr


def monitored(**options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(P, 16), nn.ReLU(), nn.Linear(16, T)).double()
    return model, CollapseMonitor(model, **options)


def feed_monitor(model, monitor, z, y, batch):
    with monitor, torch.no_grad():
        for start in range(0, len(z), batch):
            x = (z[start : start + batch] - 1000.0) / 10
            monitor.update(y[start : start + batch], model(x))


@pytest.mark.parametrize(("n", "batch"), [(N, 40), (N, 300)])  # the second: rank 1 gets 1 sample
def test_two_ranks_reduce_to_the_single_stream(tmp_path, n, batch):
    run_script(tmp_path, "reduce.py", REDUCE_SCRIPT, n=n, batch=batch)
    z, y = data(n)
    accs = accumulators()
    feed(accs, z, y, batch)
    want = summary(accs)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == want["n"] == n
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
    model, monitor = monitored()
    feed_monitor(model, monitor, z, y, batch)
    one = monitor.compute().to_dict()
    files = [f"{kind}{rank}.json" for kind in ("monitor", "default", "new") for rank in (0, 1)]
    for name in files:
        got = json.loads((tmp_path / name).read_text())
        assert got["summary"].pop("world_size") == 2 and one["summary"]["world_size"] == 1
        assert got["summary"]["n_samples"] == n
        for mine, theirs in zip(got["layers"], one["layers"], strict=True):
            for key, value in theirs.items():
                if isinstance(value, float):
                    assert mine[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
                else:
                    assert mine[key] == value, key


SKETCH_SCRIPT = """
import json, sys
import torch
sys.path[:0] = {tests!r}
from test_distributed import P, data, feed_monitor, monitored
from nrc_cli.accumulate.sketch import CovarianceSketch
from nrc_cli.distributed import launch_from_env, process_group, share
from nrc_cli.errors import NrcError
from nrc_cli.linalg import gaussian_test_matrix

launch = launch_from_env()
rank = launch.rank
z, y = data()
start, stop = share(len(z), 40, rank, launch.world_size)
out = {{}}
with process_group(launch, "cpu") as group:
    # Each rank sketches with the test matrix of its own seed: the sums of Σ_Z·Ω would be no
    # sketch at all.
    acc = CovarianceSketch(gaussian_test_matrix(P, 5, seed=3 + rank))
    acc.update(z[start:stop], y[start:stop])
    before = acc.state_dict()
    try:
        group.reduce(acc)
    except ValueError as err:
        out["accumulator"] = str(err)
    after = acc.state_dict()
    out["accumulator unchanged"] = all(torch.equal(before[k], after[k]) for k in before)
    # The public route: monitors whose sketch of layer 2 differs between the ranks.
    cases = {{
        "seed": {{"sketch": {{"2": 5}}, "seed": rank}},
        "size": {{"sketch": {{"2": 4 + rank}}}},
        "kind": {{"sketch": {{"2": 5}} if rank else {{}}}},
    }}
    for case, options in cases.items():
        model, monitor = monitored(**options)
        feed_monitor(model, monitor, z[start:stop], y[start:stop], 40)
        want = monitor.compute().to_dict()
        try:
            monitor.all_reduce(group)
        except NrcError as err:
            out[case] = [type(err).__name__, err.message]
        out[case + " unchanged"] = monitor.compute().to_dict() == want
json.dump(out, open("sketch%d.json" % rank, "w"))
"""


def test_ranks_that_sketch_with_different_test_matrices_are_refused_on_every_rank(tmp_path):
    run_script(tmp_path, "sketch.py", SKETCH_SCRIPT)
    matrices = (
        "CollapseMonitor.all_reduce(): layer '2' is sketched with different test matrices on "
        "the ranks (another seed or sketch size)"
    )
    for rank in (0, 1):
        got = json.loads((tmp_path / f"sketch{rank}.json").read_text())
        assert got == {
            "accumulator": "the processes sketch a layer with different test matrices (seed "
            "or sketch size)",
            "accumulator unchanged": True,
            "seed": ["ConfigError", matrices],
            "seed unchanged": True,
            "size": ["ConfigError", matrices],
            "size unchanged": True,
            "kind": [
                "ConfigError",
                "CollapseMonitor.all_reduce(): layer '2' is accumulated differently on the "
                "ranks (sketched on some, exact on others, or with features of another width)",
            ],
            "kind unchanged": True,
        }, rank


# ------------------------------------------------------------------------------------------------
# Two ranks of a classifier: per-class sums, a class some ranks never see, the second pass
# ------------------------------------------------------------------------------------------------

K = 6  # the classifier's outputs; label 4 is never used, so labels run 0, 1, 2, 3, 5


def class_data(n=N):
    """Features far from 0, clustered by class; the first 160 samples have labels 0..2, the
    others 2, 3 and 5, so that with batches of 40 rank 0 never sees 3 and 5 nor rank 1 0 and 1
    (and with batches of 300 rank 1 has one sample of one class)."""
    g = torch.Generator().manual_seed(7)
    early = torch.randint(0, 3, (n,), generator=g)
    late = torch.tensor([2, 3, 5])[torch.randint(0, 3, (n,), generator=g)]
    labels = torch.where(torch.arange(n) < 160, early, late)
    centres = 1000.0 + 3 * torch.randn(K, P, generator=g, dtype=torch.float64)
    mix = 0.5 * torch.randn(P, P, generator=g, dtype=torch.float64)
    z = centres[labels] + torch.randn(n, P, generator=g, dtype=torch.float64) @ mix
    return z, labels


def class_accumulators():
    return ClassMoments(), ClassSketch(gaussian_test_matrix(P, 5, seed=3)), Agreement()


def guessed(z, labels):
    """A stand-in for a model's predicted class: the label, or 0 for every third sample."""
    return torch.where(torch.arange(len(labels)) % 3 == 0, torch.zeros_like(labels), labels)


def feed_classes(accs, z, labels, batch):
    moments, sketch, agreement = accs
    for start in range(0, len(z), batch):
        zb, lb = z[start : start + batch], labels[start : start + batch]
        moments.update(zb, lb)
        sketch.update(zb, lb)
        agreement.update(guessed(zb, lb), lb)


def nearest(accs, z, labels, batch):
    """The nearest-class-mean counts of ``z``, fed the class means of (reduced) ``accs``."""
    stats = accs[0].compute()
    ncc = NearestClassMean(stats.labels, stats.means, stats.mean)
    for start in range(0, len(z), batch):
        ncc.update(z[start : start + batch], labels[start : start + batch])
    return ncc


def class_summary(accs, ncc) -> dict:
    moments, sketch, agreement = accs
    m, s = moments.compute(), sketch.compute()
    counts = ncc.compute()
    return {
        "n": m.n,
        "labels": m.labels.tolist(),
        "counts": m.counts.tolist(),
        "means": m.means.tolist(),
        "mean": m.mean.tolist(),
        "cov_within": m.cov_within.tolist(),
        "within_trace": m.within_trace,
        "sketch_means": s.means.tolist(),
        "within_sketch": s.within_sketch.tolist(),
        "sketch_trace": s.within_trace,
        "model_accuracy": agreement.compute(),
        "ncc": [counts.n, counts.correct],
    }


def classifier():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(P, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K)
    ).double()
    # Layer 2 sketched: its nc1 comes from the second pass.
    return model, CollapseMonitor(model, task="classification", sketch={"2": 6})


def feed_classifier(model, monitor, z, labels, batch):
    with monitor, torch.no_grad():
        for start in range(0, len(z), batch):
            x = (z[start : start + batch] - 1000.0) / 3
            monitor.update(labels[start : start + batch], model(x))


CLASS_SCRIPT = """
import json, sys
sys.path[:0] = {tests!r}
from test_distributed import (class_accumulators, class_data, class_summary, classifier,
                              feed_classes, feed_classifier, nearest)
from nrc_cli.distributed import launch_from_env, process_group, share
from nrc_cli.errors import NrcError

n, batch = {n}, {batch}
launch = launch_from_env()
z, labels = class_data(n)
start, stop = share(n, batch, launch.rank, launch.world_size)
mine = z[start:stop], labels[start:stop]
accs = class_accumulators()
feed_classes(accs, *mine, batch)
refused = []
with process_group(launch, "cpu") as group:
    for acc in accs:
        group.reduce(acc)
    ncc = group.reduce(nearest(accs, *mine, batch))
    json.dump(class_summary(accs, ncc), open("rank%d.json" % launch.rank, "w"))
    # The public route: all_reduce after each pass, the second pass begun on every rank.
    model, monitor = classifier()
    feed_classifier(model, monitor, *mine, batch)
    monitor.all_reduce(group)
    saved = monitor.state_dict()
    monitor.begin_second_pass()
    feed_classifier(model, monitor, *mine, batch)
    monitor.all_reduce(group)
    try:  # a pass reduced twice would count the other rank's samples twice
        monitor.all_reduce(group)
    except NrcError as err:
        refused.append(err.message)
    again, early = classifier()  # a second pass begun on each rank's own class means
    feed_classifier(again, early, *mine, batch)
    early.begin_second_pass()
    feed_classifier(again, early, *mine, batch)
    try:
        early.all_reduce(group)
    except NrcError as err:
        refused.append(err.message)
    # A reduced first pass saved and loaded still knows it covers every rank.
    model, reloaded = classifier()
    reloaded.load_state_dict(saved)
    reloaded.begin_second_pass()
    feed_classifier(model, reloaded, *mine, batch)
    reloaded.all_reduce(group)
report = monitor.compute().to_dict()
same = reloaded.compute().to_dict() == report
json.dump({{"report": report, "refused": refused, "reloaded": same}},
          open("monitor%d.json" % launch.rank, "w"))
"""


@pytest.mark.parametrize(("n", "batch"), [(N, 40), (N, 300)])  # the second: rank 1 gets 1 sample
def test_two_ranks_of_a_classifier_reduce_to_the_single_stream(tmp_path, n, batch):
    run_script(tmp_path, "classes.py", CLASS_SCRIPT, n=n, batch=batch)
    z, labels = class_data(n)
    accs = class_accumulators()
    feed_classes(accs, z, labels, batch)
    want = class_summary(accs, nearest(accs, z, labels, batch))
    assert want["labels"] == [0, 1, 2, 3, 5]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["n"] == n and got["ncc"][0] == n
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
    model, monitor = classifier()
    feed_classifier(model, monitor, z, labels, batch)
    monitor.begin_second_pass()
    feed_classifier(model, monitor, z, labels, batch)
    one = monitor.compute().to_dict()
    assert one["layers"][0]["ncc_accuracy"] is not None and one["layers"][1]["nc1"] is not None
    for rank in (0, 1):
        done = json.loads((tmp_path / f"monitor{rank}.json").read_text())
        got = done["report"]
        assert got["summary"].pop("world_size") == 2 and one["summary"]["world_size"] == 1
        assert got["summary"]["n_samples"] == n and got["summary"]["passes"] == 2
        for key, value in one["summary"].items():
            if isinstance(value, float):
                assert got["summary"][key] == pytest.approx(value, rel=1e-9), key
            elif key != "world_size" and (key != "plan" or rank == 0):
                # (the plan's bytes count a rank's own first batch)
                assert got["summary"][key] == value, key
        for mine, theirs in zip(got["layers"], one["layers"], strict=True):
            for key, value in theirs.items():
                if isinstance(value, float):
                    assert mine[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
                else:
                    assert mine[key] == value, key
        assert done["reloaded"]
        assert done["refused"] == [
            "CollapseMonitor.all_reduce(): the second pass was reduced already; reducing it "
            "again would count the other ranks' samples twice",
            "CollapseMonitor.all_reduce(): the second pass began before the first was "
            "reduced, so each rank's nearest class means were its own",
        ]


CHECK_SCRIPT = """
import sys, time
from nrc_cli.distributed import launch_from_env, process_group, RankFailed
from nrc_cli.errors import DataError

launch = launch_from_env()
with process_group(launch, "cpu") as group:
    seen = []
    def work(i):
        if launch.rank == 1 and i == 2:
            raise DataError("data.npz: array 'x' has a non-finite value (nan) at sample 12",
                            hint="remove or repair that sample")
        if launch.rank == 0 and i == 3:
            time.sleep(0.5)
        seen.append(i)
    try:
        group.each(iter(range(5 + launch.rank)), 6, work)
    except RankFailed as err:
        print(err.failed_rank, err.exit_code, err.reported_elsewhere, seen, sep=";")
        print(err.message, "|", err.hint)
        code = err.exit_code
    # A bug (not an NrcError) on rank 0 only: exit code 3 on both.
    try:
        group.check(KeyError("layer") if launch.rank == 0 else None)
    except RankFailed as err:
        print(err.exit_code, err.message, sep="|")
sys.exit(code)
"""


def test_an_error_on_one_rank_ends_both_within_a_step_and_a_bug_is_code_3(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    ended, wall = run_ranks([str(script)], cwd=tmp_path, timeout=60)
    assert [e.returncode for e in ended] == [2, 2], [e.stderr for e in ended]
    for e in ended:
        head, message, bug = e.stdout.strip().splitlines()
        assert head == f"1;2;{e.rank != 0};{[0, 1, 2] if e.rank == 0 else [0, 1]}"
        assert message == (
            "rank 1: data.npz: array 'x' has a non-finite value (nan) at sample 12 | "
            "remove or repair that sample"
        )
        assert bug == "3|rank 0: internal error: KeyError: 'layer'"
    assert wall < 30


SILENT_SCRIPT = """
import time
from nrc_cli.distributed import launch_from_env, process_group
from nrc_cli.errors import NrcError

launch = launch_from_env()
with process_group(launch, "cpu") as group:
    if launch.rank == 1:
        time.sleep(4)  # never meets rank 0
    else:
        try:
            group.check()
        except NrcError as err:
            print(err.message)
"""


def test_a_rank_that_never_answers_is_a_timeout_with_a_message(tmp_path):
    script = tmp_path / "silent.py"
    script.write_text(textwrap.dedent(SILENT_SCRIPT))
    ended, wall = run_ranks([str(script)], cwd=tmp_path, timeout=60, env={"NRC_DIST_TIMEOUT": "2"})
    assert "rank 0: the other ranks did not answer within 2 s (NRC_DIST_TIMEOUT)" in (
        ended[0].stdout
    ), ended[0].stderr
    assert wall < 40

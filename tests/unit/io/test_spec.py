"""Tests for :mod:`nrc_cli.io.spec` (TOML data specs) and :mod:`nrc_cli.io.sources` (Parquet, CSV,
.npy, .npz readers), on real files written in ``tmp_path``.

The reference is :class:`NpzDataset` on an ``.npz`` holding the same numbers: a spec must yield
identical batches.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.data import NpzDataset, open_dataset
from nrc_cli.io.dataset import SpecDataset
from nrc_cli.io.spec import DataSpec, read_spec

# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


def _arrays(n=250, f=4, t=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)).astype(np.float32)
    y = rng.standard_normal((n, t)).astype(np.float32)
    return x, y


def _table(x, y, **extra) -> pa.Table:
    cols = {f"f{j}": x[:, j] for j in range(x.shape[1])}
    cols.update({f"y{j}": y[:, j] for j in range(y.shape[1])})
    cols.update(extra)
    return pa.table(cols)


def _spec(tmp_path, text: str, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _collect(ds, batch_size):
    batches = list(ds.batches(batch_size))
    return (
        np.concatenate([b.x for b in batches]),
        np.concatenate([b.y for b in batches]),
        [b.start for b in batches],
    )


def _formats(tmp_path, x, y) -> dict[str, object]:
    """The same numbers as every kind of spec; each entry is a spec path."""
    t = _table(x, y)
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=37)  # batches cross row groups
    pcsv.write_csv(t, tmp_path / "t.csv")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savez_compressed(tmp_path / "c.npz", inputs=x, targets=y)
    pq.write_table(pa.table({f"y{j}": y[:, j] for j in range(y.shape[1])}), tmp_path / "y.parquet")
    tables = """
        [inputs]
        columns = "f*"
        [targets]
        columns = ["y0", "y1"]
    """
    return {
        "parquet": _spec(tmp_path, 'file = "t.parquet"\n' + textwrap.dedent(tables), "p.toml"),
        "csv": _spec(tmp_path, 'file = "t.csv"\n' + textwrap.dedent(tables), "c.toml"),
        "npy": _spec(tmp_path, '[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.npy"\n', "n.toml"),
        "npz": _spec(
            tmp_path,
            '[inputs]\nfile = "c.npz"\narray = "inputs"\n'
            '[targets]\nfile = "c.npz"\narray = "targets"\n',
            "z.toml",
        ),
        "npy+parquet": _spec(
            tmp_path,
            '[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.parquet"\ncolumns = "y*"\n',
            "m.toml",
        ),
    }


# ------------------------------------------------------------------------------------------------
# Same numbers, every format: identical batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 16, 100, 1000])
def test_every_format_gives_the_npz_batches(tmp_path, batch_size):
    x, y = _arrays()
    np.savez(tmp_path / "ref.npz", x=x, y=y)
    with NpzDataset(tmp_path / "ref.npz") as ref:
        rx, ry, rstarts = _collect(ref, batch_size)
    for name, spec in _formats(tmp_path, x, y).items():
        with open_dataset(spec) as ds:
            assert isinstance(ds, SpecDataset)
            assert (ds.n_samples, ds.n_features, ds.target_dim) == (250, 4, 2), name
            assert ds.x_sample_shape == (4,) and ds.input_names == ()
            sx, sy, starts = _collect(ds, batch_size)
        tol = 1e-6 if name == "csv" else 0  # CSV holds decimal text
        np.testing.assert_allclose(sx, rx, rtol=0, atol=tol, err_msg=name)
        np.testing.assert_allclose(sy, ry, rtol=0, atol=tol, err_msg=name)
        assert sy.dtype == np.float64 and starts == rstarts, name
        assert sx.flags.writeable and sx.flags.c_contiguous


@pytest.mark.parametrize("batch_size", [7, 64])
def test_range_and_max_samples_match_slicing(tmp_path, batch_size):
    x, y = _arrays(n=300)
    specs = _formats(tmp_path, x, y)
    for name, spec in specs.items():
        text = spec.read_text() + "\n[range]\nstart = 45\nstop = 260\n"
        spec.write_text(text)
        with open_dataset(spec, max_samples=200) as ds:
            assert ds.n_samples == 200 and ds.start == 45
            sx, sy, starts = _collect(ds, batch_size)
        tol = 1e-6 if name == "csv" else 0  # CSV holds decimal text
        np.testing.assert_allclose(sx, x[45:245], rtol=0, atol=tol)
        np.testing.assert_allclose(sy, y[45:245], rtol=0, atol=tol)
        # Batch.start is the row of the file, so error messages point into it.
        assert starts == list(range(45, 245, batch_size)), name


def test_parts_are_the_slices_of_the_selected_samples(tmp_path):
    x, y = _arrays(n=300)
    for name, spec in _formats(tmp_path, x, y).items():
        spec.write_text(spec.read_text() + "\n[range]\nstart = 45\nstop = 260\n")
        with open_dataset(spec) as ds:
            got = []
            for part in [(0, 70), (70, 140), (140, 215), (215, 215)]:
                batches = list(ds.batches(35, part=part))
                assert [b.start for b in batches] == list(range(45 + part[0], 45 + part[1], 35))
                got += batches
        tol = 1e-6 if name == "csv" else 0
        np.testing.assert_allclose(np.concatenate([b.x for b in got]), x[45:260], atol=tol)
        np.testing.assert_allclose(np.concatenate([b.y for b in got]), y[45:260], atol=tol)


def test_several_passes_are_identical(tmp_path):
    x, y = _arrays()
    for spec in _formats(tmp_path, x, y).values():
        with open_dataset(spec) as ds:
            a = _collect(ds, 33)
            b = _collect(ds, 33)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_same_file_for_inputs_and_targets_is_opened_once(tmp_path):
    x, y = _arrays()
    spec = _formats(tmp_path, x, y)["parquet"]
    with open_dataset(spec) as ds:
        assert len(ds.open_files) == 1


# ------------------------------------------------------------------------------------------------
# Dtypes
# ------------------------------------------------------------------------------------------------


def test_table_dtypes(tmp_path):
    n = 20
    t = pa.table(
        {
            "i": np.arange(n, dtype=np.int64),
            "b": np.arange(n) % 2 == 0,
            "h": np.ones(n, np.float32),
            "d": np.ones(n, np.float64),
            "y": np.arange(n, dtype=np.int32),
        }
    )
    pq.write_table(t, tmp_path / "t.parquet")

    def dtype_of(columns, extra=""):
        spec = _spec(
            tmp_path,
            f'file = "t.parquet"\n[inputs]\ncolumns = {json.dumps(columns)}\n{extra}'
            '[targets]\ncolumns = "y"\n',
        )
        with open_dataset(spec) as ds:
            (batch,) = ds.batches(100)
            assert batch.y.dtype == np.float64
            assert ds.x_info.dtype == batch.x.dtype
            return batch.x.dtype, batch.x

    assert dtype_of(["h"])[0] == np.float32  # one shared float dtype is kept
    assert dtype_of(["h", "d"])[0] == np.float64
    dt, xs = dtype_of(["i", "b"])  # integer features need no conversion
    assert dt == np.float64
    np.testing.assert_array_equal(xs[:, 0], np.arange(n))
    np.testing.assert_array_equal(xs[:, 1], np.arange(n) % 2 == 0)
    assert dtype_of(["i"], 'dtype = "int64"\n')[0] == np.int64
    assert dtype_of(["d"], 'dtype = "float16"\n')[0] == np.float16


def test_npy_keeps_integer_token_ids(tmp_path):
    ids = np.arange(60, dtype=np.int32).reshape(20, 3)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "y.npy", np.arange(20.0))
    spec = _spec(tmp_path, '[inputs]\nfile = "ids.npy"\n[targets]\nfile = "y.npy"\n')
    with open_dataset(spec) as ds:
        (batch,) = ds.batches(64)
        assert ds.target_dim == 1
    assert batch.x.dtype == np.int32
    np.testing.assert_array_equal(batch.x, ids)
    assert batch.y.shape == (20, 1)


def test_csv_float_column_after_a_block_of_integers(tmp_path):
    """Types come from the output dtype, not from pyarrow's guess on the first block."""
    n = 60_000
    values = np.arange(n, dtype=np.float64)
    values[-1] = 0.5
    lines = ["a,y"] + [f"{int(v) if v.is_integer() else v},1" for v in values]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec = _spec(tmp_path, 'file = "t.csv"\n[inputs]\ncolumns = "a"\n[targets]\ncolumns = "y"\n')
    with open_dataset(spec) as ds:
        assert ds.n_samples == n
        xs, _, _ = _collect(ds, 4096)
    np.testing.assert_array_equal(xs[:, 0], values)


def test_tsv_and_custom_delimiter(tmp_path):
    (tmp_path / "t.tsv").write_text("a\tb\ty\n1\t2\t3\n4\t5\t6\n")
    (tmp_path / "t.csv").write_text("a;b;y\n1;2;3\n4;5;6\n")
    for spec_text in (
        'file = "t.tsv"\n[inputs]\ncolumns = ["a", "b"]\n[targets]\ncolumns = "y"\n',
        'file = "t.csv"\ndelimiter = ";"\n[inputs]\ncolumns = ["a", "b"]\n[targets]\n'
        'columns = "y"\n',
    ):
        with open_dataset(_spec(tmp_path, spec_text)) as ds:
            (batch,) = ds.batches(8)
        np.testing.assert_array_equal(batch.x, [[1, 2], [4, 5]])
        np.testing.assert_array_equal(batch.y, [[3], [6]])


# ------------------------------------------------------------------------------------------------
# Named inputs
# ------------------------------------------------------------------------------------------------


def test_named_inputs_from_a_spec(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (50, 8))
    mask = rng.integers(0, 2, (50, 8)).astype(np.int8)
    feats = rng.standard_normal((50, 3))
    y = rng.standard_normal(50)
    np.savez(tmp_path / "tok.npz", input_ids=ids, mask=mask, y=y)
    pq.write_table(
        pa.table({"a": feats[:, 0], "b": feats[:, 1], "c": feats[:, 2]}), tmp_path / "f.parquet"
    )
    spec = _spec(
        tmp_path,
        """
        [inputs]
        file = "tok.npz"
        [inputs.input_ids]
        [inputs.attention_mask]
        array = "mask"
        [inputs.extra]
        file = "f.parquet"
        columns = ["a", "b", "c"]
        [targets]
        file = "tok.npz"
        """,
    )
    with open_dataset(spec) as ds:
        assert ds.input_names == ("input_ids", "attention_mask", "extra")
        assert ds.x_info.key == "input_ids" and ds.x_sample_shape == (8,)
        assert ds.n_features == 8 and ds.target_dim == 1
        batches = list(ds.batches(16))
    assert all(list(b.x) == ["input_ids", "attention_mask", "extra"] for b in batches)
    got = {k: np.concatenate([b.x[k] for b in batches]) for k in batches[0].x}
    assert got["input_ids"].dtype == ids.dtype and got["attention_mask"].dtype == np.int8
    np.testing.assert_array_equal(got["input_ids"], ids)
    np.testing.assert_array_equal(got["attention_mask"], mask)
    np.testing.assert_array_equal(got["extra"], feats)


def test_named_input_names_must_be_identifiers(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(3))
    spec = _spec(
        tmp_path,
        '[inputs]\nfile = "d.npz"\n[inputs."input-ids"]\narray = "x"\n[targets]\nfile = "d.npz"\n',
    )
    with pytest.raises(ConfigError, match="'input-ids' is not a valid Python identifier"):
        open_dataset(spec)


# ------------------------------------------------------------------------------------------------
# Standardisation
# ------------------------------------------------------------------------------------------------


def test_standardisation_uses_the_selected_range(tmp_path):
    x, y = _arrays(n=400, seed=3)
    x = x * np.array([1, 10, 100, 0], np.float32) + np.array([0, 5, -3, 7], np.float32)
    spec = _formats(tmp_path, x, y)["parquet"]
    spec.write_text(
        spec.read_text() + "[range]\nstart = 50\nstop = 350\n[standardize]\ninputs = true\n"
        "targets = true\n"
    )
    sel_x, sel_y = x[50:350].astype(np.float64), y[50:350].astype(np.float64)
    results = []
    for batch_size in (7, 300):
        with open_dataset(spec) as ds:
            sx, sy, _ = _collect(ds, batch_size)
            mean, std = ds.statistics[""]
            np.testing.assert_allclose(mean, sel_x.mean(0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(std[:3], sel_x.std(0)[:3], rtol=1e-12)
            assert std[3] == 1.0  # a constant column is only centred
            np.testing.assert_allclose(ds.statistics["targets"][0], sel_y.mean(0), atol=1e-12)
        assert sx.dtype == np.float32
        np.testing.assert_allclose(sx[:, :3].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(sx[:, :3].std(0), 1, atol=1e-5)
        np.testing.assert_array_equal(sx[:, 3], 0)
        np.testing.assert_allclose(sy, (sel_y - sel_y.mean(0)) / sel_y.std(0), atol=1e-12)
        results.append((sx, sy))
    # The statistics do not depend on --batch-size.
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_integer_inputs_are_never_standardised(tmp_path):
    ids = np.arange(40).reshape(20, 2)
    feats = np.linspace(0, 1, 20)[:, None] * np.ones((1, 2))
    np.savez(tmp_path / "d.npz", ids=ids, feats=feats, y=np.arange(20.0))
    spec = _spec(
        tmp_path,
        '[inputs]\nfile = "d.npz"\n[inputs.ids]\n[inputs.feats]\n[targets]\nfile = "d.npz"\n'
        "[standardize]\ninputs = true\n",
    )
    with open_dataset(spec) as ds:
        (batch,) = ds.batches(64)
        assert set(ds.statistics) == {"feats"}
    np.testing.assert_array_equal(batch.x["ids"], ids)
    np.testing.assert_allclose(batch.x["feats"].mean(0), 0, atol=1e-12)
    np.testing.assert_array_equal(batch.y[:, 0], np.arange(20.0))  # targets untouched


# ------------------------------------------------------------------------------------------------
# Streaming: tables are read in batches, never whole
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_tables_are_streamed(tmp_path, kind):
    n, f = 200_000, 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, f))
    t = _table(x, x[:, :1])
    path = tmp_path / f"t.{kind}"
    if kind == "parquet":
        pq.write_table(t, path, row_group_size=5_000)
    else:
        pcsv.write_csv(t, path)
    spec = _spec(
        tmp_path, f'file = "t.{kind}"\n[inputs]\ncolumns = "f*"\n[targets]\ncolumns = "y0"\n'
    )
    # Parquet: the selected columns in memory; CSV: the text.
    whole = n * (f + 1) * 8 if kind == "parquet" else path.stat().st_size
    peak = 0
    total = np.zeros(f)
    with open_dataset(spec) as ds:
        base = pa.total_allocated_bytes()
        for batch in ds.batches(2048):
            total += batch.x.sum(0)
            peak = max(peak, pa.total_allocated_bytes() - base)
    np.testing.assert_allclose(total, x.sum(0), rtol=1e-9)
    # Arrow memory in use stays a fraction of the data: bounded by a row group or by pyarrow's
    # read-ahead of CSV blocks, not by N.
    assert peak < whole / (4 if kind == "parquet" else 2), (peak, whole)


# ------------------------------------------------------------------------------------------------
# Bad data
# ------------------------------------------------------------------------------------------------


def test_missing_column_lists_the_columns(tmp_path):
    x, y = _arrays()
    spec = _formats(tmp_path, x, y)["parquet"]
    spec.write_text(spec.read_text().replace('"y0", "y1"', '"y0", "target"'))
    with pytest.raises(
        DataError,
        match=r"t\.parquet: no column 'target' for the targets; the file has 6 column\(s\): "
        r"'f0', 'f1', 'f2', 'f3', 'y0', 'y1'",
    ):
        open_dataset(spec)
    spec.write_text(spec.read_text().replace('"f*"', '"g*"'))
    with pytest.raises(DataError, match=r"no column 'g\*' for the inputs"):
        open_dataset(spec)


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_text_column_is_refused(tmp_path, kind):
    x, y = _arrays(n=10)
    t = _table(x, y, name=[f"s{i}" for i in range(10)])
    if kind == "parquet":
        pq.write_table(t, tmp_path / "t.parquet")
    else:
        pcsv.write_csv(t, tmp_path / "t.csv")
    spec = _spec(
        tmp_path,
        f'file = "t.{kind}"\n[inputs]\ncolumns = ["f0", "name"]\n[targets]\ncolumns = "y0"\n',
    )
    with pytest.raises(DataError, match=r"column 'name' \(inputs\) holds .*expected numbers"):
        open_dataset(spec)


def test_null_in_parquet_names_column_and_row(tmp_path):
    values = pa.array([1.0, 2.0, None, 4.0] * 25)
    pq.write_table(
        pa.table({"a": values, "y": np.zeros(100)}), tmp_path / "t.parquet", row_group_size=30
    )
    spec = _spec(
        tmp_path, 'file = "t.parquet"\n[inputs]\ncolumns = "a"\n[targets]\ncolumns = "y"\n'
    )
    with (
        open_dataset(spec) as ds,
        pytest.raises(
            DataError, match=r"t\.parquet: column 'a' has a missing value \(null\) at row 2$"
        ),
    ):
        list(ds.batches(10))
    spec.write_text(spec.read_text() + "[range]\nstart = 40\n")
    with open_dataset(spec) as ds, pytest.raises(DataError, match=r"null\) at row 42$"):
        list(ds.batches(10))


def test_null_in_csv_names_row_and_line(tmp_path):
    (tmp_path / "t.csv").write_text("a,y\n1,0\n2,0\n,0\n4,0\n")
    spec = _spec(tmp_path, 'file = "t.csv"\n[inputs]\ncolumns = "a"\n[targets]\ncolumns = "y"\n')
    with (
        open_dataset(spec) as ds,
        pytest.raises(
            DataError, match=r"column 'a' has a missing value \(null\) at row 2 \(line 4\)"
        ),
    ):
        list(ds.batches(2))


def test_text_in_a_later_csv_block(tmp_path):
    lines = ["a,y"] + [f"{i},0" for i in range(300_000)] + ["oops,0"]  # past block 1
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec = _spec(tmp_path, 'file = "t.csv"\n[inputs]\ncolumns = "a"\n[targets]\ncolumns = "y"\n')
    with open_dataset(spec) as ds, pytest.raises(DataError, match=r"t\.csv: cannot read the rows"):
        list(ds.batches(4096))


def test_nan_in_a_column_names_column_and_row(tmp_path):
    x, y = _arrays(n=50)
    x[31, 2] = np.nan
    y[40, 1] = np.inf
    spec = _formats(tmp_path, x, y)["parquet"]
    with (
        open_dataset(spec) as ds,
        pytest.raises(DataError, match=r"column 'f2' has a non-finite value \(nan\) at row 31"),
    ):
        list(ds.batches(8))
    x[31, 2] = 0
    spec = _formats(tmp_path, x, y)["npy"]
    with (
        open_dataset(spec) as ds,
        pytest.raises(
            DataError, match=r"y\.npy: array 'y' has a non-finite value \(inf\) at sample 40"
        ),
    ):
        list(ds.batches(8))


def test_sample_counts_must_agree(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    pq.write_table(pa.table({"y": np.zeros(12)}), tmp_path / "y.parquet")
    spec = _spec(
        tmp_path, '[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.parquet"\ncolumns = "y"\n'
    )
    with pytest.raises(
        DataError,
        match=r"same number of samples N, but the inputs \(.*x\.npy, 'x'\) has N = 10 and the "
        r"targets \(.*y\.parquet, 'y'\) has N = 12",
    ):
        open_dataset(spec)


def test_range_past_the_end(tmp_path):
    x, y = _arrays(n=30)
    spec = _formats(tmp_path, x, y)["csv"]
    spec.write_text(spec.read_text() + "[range]\nstart = 10\nstop = 31\n")
    with pytest.raises(DataError, match="stop = 31 does not fit the data, which has N = 30"):
        open_dataset(spec)


def test_bad_files_named_by_a_spec(tmp_path):
    (tmp_path / "fake.parquet").write_text("hello")
    (tmp_path / "fake.npy").write_bytes(b"\x00" * 100)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None]), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(2))
    np.save(tmp_path / "cut.npy", np.zeros((100, 2)))
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-100])
    cases = {
        '[inputs]\nfile = "fake.parquet"\ncolumns = "a"': "expected a Parquet file, found a text",
        '[inputs]\nfile = "fake.npy"': "expected an .npy array",
        '[inputs]\nfile = "obj.npy"': "would need pickle",
        '[inputs]\nfile = "cut.npy"': r"array ends early: its data stops at sample 93",
        '[inputs]\nfile = "none.npy"': "none.npy: data file not found",
        '[inputs]\nfile = "x.h5"': r"unsupported data file type '\.h5'",
    }
    for inputs, match in cases.items():
        spec = _spec(tmp_path, inputs + '\n[targets]\nfile = "y.npy"\n')
        with pytest.raises(DataError, match=match):
            open_dataset(spec)


# ------------------------------------------------------------------------------------------------
# The spec format
# ------------------------------------------------------------------------------------------------


def test_parse_defaults_and_inheritance(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    spec = read_spec(
        _spec(
            sub,
            """
            file = "../t.csv"
            delimiter = ";"
            [inputs]
            columns = ["a", "b*"]
            dtype = "float32"
            [targets]
            file = "/abs/y.npz"
            """,
        )
    )
    assert isinstance(spec, DataSpec)
    ((name, inp),) = spec.inputs
    assert name == "" and spec.input_names == ()
    assert inp.file == sub / "../t.csv" and inp.columns == ("a", "b*")
    assert inp.dtype == np.float32 and inp.delimiter == ";"
    assert spec.targets.array == "y"  # .npz default
    assert (spec.start, spec.stop, spec.standardize_inputs) == (0, None, False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[targets]\nfile = 'a.npz'\n", r"missing the \[inputs\] section"),
        ("inputs = 3\n[targets]\nfile = 'a.npz'\n", "'inputs' must be a table"),
        (
            "[inputs]\nfile = 'a.npz'\n[targets]\nfile = 'a.npz'\ncolour = 1\n",
            r"unknown key 'colour' in \[targets\]",
        ),
        ("seed = 1\n[inputs]\n[targets]\n", "unknown key 'seed' in the top level"),
        ("[inputs]\ncolumns = ['a']\n[targets]\nfile = 'a.npz'\n", r"\[inputs\] names no file"),
        (
            "[inputs]\nfile = 'a.parquet'\ncolumns = []\n[targets]\nfile = 'a.npz'\n",
            "columns must be a column name",
        ),
        (
            "[inputs]\nfile = 'a.npz'\ncolumns = ['a']\n[targets]\nfile = 'a.npz'\n",
            "columns select table columns",
        ),
        (
            "[inputs]\nfile = 'a.npy'\narray = 'x'\n[targets]\nfile = 'a.npz'\n",
            "holds one unnamed array",
        ),
        (
            "[inputs]\nfile = 'a.csv'\narray = 'x'\n[targets]\nfile = 'a.npz'\n",
            "array names an .npz array",
        ),
        (
            "[inputs]\nfile = 'a.npz'\ndtype = 'str'\n[targets]\nfile = 'a.npz'\n",
            "must name a numeric dtype",
        ),
        (
            "[inputs]\nfile = 'a.parquet'\ndelimiter = ';'\n[targets]\nfile = 'a.npz'\n",
            "delimiter applies to CSV",
        ),
        (
            "[inputs]\nfile = 'a.npz'\n[targets]\nfile = 'a.npz'\n[range]\nstart = 5\nstop = 5\n",
            r"stop \(5\) must be greater than start \(5\)",
        ),
        (
            "[inputs]\nfile = 'a.npz'\n[targets]\nfile = 'a.npz'\n[range]\nstart = -1\n",
            "start must be >= 0",
        ),
        (
            "[inputs]\nfile = 'a.npz'\n[targets]\nfile = 'a.npz'\n[range]\nstart = 1.5\n",
            "start must be a whole number",
        ),
        (
            "[inputs]\nfile = 'a.npz'\n[targets]\nfile = 'a.npz'\n[standardize]\ninputs = 'yes'\n",
            "inputs must be true or false",
        ),
        ("[inputs]\nfile = 'a.npz'\n[targets.t1]\nfile = 'a.npz'\n", "targets cannot be named"),
        (
            "[inputs]\nfile = 'a.npz'\n[inputs.ids]\n[targets]\nfile = 'a.npz'\n"
            "[inputs.mask]\ncolumns = 3\n",
            "columns must be",
        ),
        ("[inputs\n", "invalid TOML"),
    ],
)
def test_spec_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        read_spec(_spec(tmp_path, text))


def test_table_without_columns_lists_them(tmp_path):
    x, y = _arrays(n=5)
    pq.write_table(_table(x, y), tmp_path / "t.parquet")
    spec = _spec(tmp_path, 'file = "t.parquet"\n[inputs]\n[targets]\ncolumns = "y*"\n')
    with pytest.raises(ConfigError, match=r"no columns; it has: 'f0', 'f1'"):
        open_dataset(spec)


def test_missing_spec_file(tmp_path):
    with pytest.raises(DataError, match="expected a TOML data spec, found nothing"):
        open_dataset(tmp_path / "nope.toml")


# ------------------------------------------------------------------------------------------------
# Through the command line
# ------------------------------------------------------------------------------------------------


def test_cli_spec_gives_the_npz_analysis(tmp_path):
    import torch
    from safetensors.torch import save_file
    from torch import nn
    from typer.testing import CliRunner

    from nrc_cli.cli import app

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 2))
    save_file({f"net.{k}": v for k, v in net.state_dict().items()}, str(tmp_path / "m.safetensors"))
    x, y = _arrays(n=200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    specs = _formats(tmp_path, x, y)

    def analyze(data, *extra):
        args = ["analyze", str(tmp_path / "m.safetensors"), "--data", str(data)]
        result = CliRunner().invoke(app, [*args, "--format", "json", "--batch-size", "64", *extra])
        assert result.exit_code == 0, result.stderr
        doc = json.loads(result.stdout)
        return {"layers": doc["layers"], "summary": doc["summary"]}

    ref = analyze(tmp_path / "d.npz")
    for name in ("parquet", "npy", "npz", "npy+parquet"):
        assert analyze(specs[name]) == ref, name
    csv = analyze(specs["csv"])
    assert [r["layer"] for r in csv["layers"]] == [r["layer"] for r in ref["layers"]]
    # A range is the same as the npz cut with --max-samples.
    spec = specs["parquet"]
    spec.write_text(spec.read_text() + "[range]\nstop = 150\n")
    assert analyze(spec) == analyze(tmp_path / "d.npz", "--max-samples", "150")

"""Tests for :mod:`nrc_cli.io.data`: streaming npz reading, on real files in ``tmp_path``."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.io.data import ArrayInfo, Batch, NpzDataset, open_dataset
from nrc_cli.io.npz import Member, npz_members

SAVERS = {"stored": np.savez, "compressed": np.savez_compressed}


def _save(tmp_path, kind, name="data.npz", **arrays):
    path = tmp_path / name
    SAVERS[kind](path, **arrays)
    return path


def _concat(ds: NpzDataset, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[Batch]]:
    batches = list(ds.batches(batch_size))
    return (
        np.concatenate([b.x for b in batches]),
        np.concatenate([b.y for b in batches]),
        batches,
    )


def _npy_bytes(array: np.ndarray, version=None) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array(buf, array, version=version)
    return buf.getvalue()


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    """Write an npz by hand (plain zipfile, no Zip64 extras unlike np.savez)."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_parts_are_slices_batched_from_their_start(tmp_path, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((250, 5)).astype(np.float32)
    y = rng.standard_normal(250)
    with NpzDataset(_save(tmp_path, kind, x=x, y=y), max_samples=240) as ds:
        for start, stop in [(0, 240), (40, 120), (120, 240), (239, 240), (100, 100)]:
            batches = list(ds.batches(32, part=(start, stop)))
            assert [b.start for b in batches] == list(range(start, stop, 32))
            if stop > start:
                np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), x[start:stop])
                np.testing.assert_array_equal(
                    np.concatenate([b.y for b in batches])[:, 0], y[start:stop]
                )
        with pytest.raises(ValueError, match="not within the 240 samples"):
            ds.batches(32, part=(10, 241))


@pytest.mark.parametrize("kind", ["stored", "compressed"])
@pytest.mark.parametrize("batch_size", [1, 7, 1024, 37])
def test_batches_concatenate_to_the_arrays(tmp_path, kind, batch_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((250, 5))
    y = rng.standard_normal((250, 3))
    path = _save(tmp_path, kind, x=x, y=y)
    with NpzDataset(path) as ds:
        assert ds.n_samples == 250
        assert ds.n_features == 5
        assert ds.x_sample_shape == (5,)
        assert ds.target_dim == 3
        assert ds.x_info == ArrayInfo("x", (250, 5), np.dtype("<f8"), kind == "compressed")
        assert ds.y_info.compressed is (kind == "compressed")
        xs, ys, batches = _concat(ds, batch_size)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    assert [b.start for b in batches] == list(range(0, 250, batch_size))
    assert all(len(b.x) == len(b.y) <= batch_size for b in batches)
    assert ys.dtype == np.float64


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_x_with_more_dims_and_1d_y(tmp_path, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3, 4, 2)).astype(np.float32)
    y = np.arange(40, dtype=np.int32)
    path = _save(tmp_path, kind, x=x, y=y)
    with NpzDataset(path) as ds:
        assert ds.x_sample_shape == (3, 4, 2)
        assert ds.n_features == 3
        assert ds.target_dim == 1
        xs, ys, batches = _concat(ds, 6)
    assert batches[0].x.shape == (6, 3, 4, 2)
    assert batches[0].y.shape == (6, 1)
    np.testing.assert_array_equal(xs, x)
    assert ys.dtype == np.float64
    np.testing.assert_array_equal(ys, y.astype(np.float64)[:, None])


@pytest.mark.parametrize("kind", ["stored", "compressed"])
@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.uint8, np.bool_])
def test_x_keeps_its_dtype(tmp_path, kind, dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((30, 4)) * 10).astype(dtype)
    path = _save(tmp_path, kind, x=x, y=np.ones(30))
    with NpzDataset(path) as ds:
        xs, _, batches = _concat(ds, 8)
    assert all(b.x.dtype == dtype for b in batches)
    np.testing.assert_array_equal(xs, x)


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_token_ids_and_custom_keys(tmp_path, kind):
    x = np.arange(60, dtype=np.int64).reshape(20, 3)
    path = _save(tmp_path, kind, tokens=x, targets=np.zeros((20, 2)), other=np.zeros(3))
    with NpzDataset(path, x_key="tokens", y_key="targets") as ds:
        xs, ys, _ = _concat(ds, 3)
    np.testing.assert_array_equal(xs, x)
    assert ys.shape == (20, 2)


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_max_samples(tmp_path, kind):
    x = np.arange(100.0).reshape(50, 2)
    path = _save(tmp_path, kind, x=x, y=np.arange(50.0))
    with NpzDataset(path, max_samples=23) as ds:
        assert ds.n_samples == 23
        xs, ys, _ = _concat(ds, 10)
    np.testing.assert_array_equal(xs, x[:23])
    np.testing.assert_array_equal(ys[:, 0], np.arange(23.0))
    with NpzDataset(path, max_samples=1000) as ds:
        assert ds.n_samples == 50


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_several_passes(tmp_path, kind):
    x = np.random.default_rng(3).standard_normal((33, 4))
    path = _save(tmp_path, kind, x=x, y=np.zeros(33))
    with NpzDataset(path) as ds:
        first = _concat(ds, 5)[0]
        second = _concat(ds, 7)[0]
        # A pass abandoned half way does not disturb the next one.
        next(iter(ds.batches(4)))
        third = _concat(ds, 33)[0]
    for xs in (first, second, third):
        np.testing.assert_array_equal(xs, x)


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_fortran_order_and_big_endian(tmp_path, kind):
    rng = np.random.default_rng(4)
    x = np.asfortranarray(rng.standard_normal((21, 6)))
    y = rng.standard_normal((21, 2)).astype(">f4")
    path = _save(tmp_path, kind, x=x, y=y)
    with NpzDataset(path) as ds:
        assert ds.y_info.dtype == np.dtype(">f4")
        for _ in range(2):
            xs, ys, batches = _concat(ds, 4)
            np.testing.assert_array_equal(xs, x)
            np.testing.assert_array_equal(ys, y.astype(np.float64))
    assert all(b.x.flags.c_contiguous and b.x.flags.writeable for b in batches)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_hand_written_zip_and_npy_versions(tmp_path, version, compression):
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    y = np.arange(8, dtype=np.float64)
    members = {"x.npy": _npy_bytes(x, version), "y.npy": _npy_bytes(y, version)}
    path = _zip(tmp_path / "hand.npz", members, compression)
    with NpzDataset(path) as ds:
        xs, ys, _ = _concat(ds, 3)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys[:, 0], y)


def test_stored_member_is_memory_mapped(tmp_path):
    x = np.random.default_rng(5).standard_normal((64, 4))
    path = _save(tmp_path, "stored", x=x, y=np.zeros(64))
    member = _member(path, "x")
    try:
        mm = member.memmap
        assert isinstance(mm, np.memmap)
        assert mm.filename == str(path.resolve())
        # The map starts past the zip local header and the npy header, inside the zip file.
        assert mm.offset > 30
        assert path.read_bytes()[mm.offset : mm.offset + x.nbytes] == x.tobytes()
    finally:
        member.release()
    with NpzDataset(path) as ds:
        # Batches are copies, not views of the map.
        batch = next(iter(ds.batches(8)))
        assert not isinstance(batch.x, np.memmap)
        assert batch.x.base is None or not isinstance(batch.x.base, np.memmap)
    assert _member(_save(tmp_path, "compressed", "c.npz", x=x, y=np.zeros(64)), "x").memmap is None


def _member(path, key):
    """The member ``key`` of an .npz as the data set's reader opens it."""
    with zipfile.ZipFile(path) as zf:
        return Member.open(zf, npz_members(zf, str(path)), key, "x", str(path))


def test_compressed_big_array_is_streamed(tmp_path):
    n, f = 3_000_000, 8  # 192 MB of float64
    x = np.zeros((n, f))
    x[::997, 3] = 1.25  # mostly zeros: compresses fast, still checks the data comes through
    path = _save(tmp_path, "compressed", x=x, y=np.zeros(n, dtype=np.float32))
    expected_sum, nbytes = float(x.sum()), x.nbytes
    del x
    tracemalloc.start()
    try:
        with NpzDataset(path) as ds:
            total, rows = 0.0, 0
            for batch in ds.batches(16384):
                total += float(batch.x.sum())
                rows += len(batch.x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == n
    assert total == expected_sum
    assert peak < nbytes / 20, f"peak {peak} bytes for a {nbytes}-byte array"


# ------------------------------------------------------------------------------------------------
# Errors at open
# ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npz: data file not found"):
        NpzDataset(tmp_path / "nope.npz")


def test_directory(tmp_path):
    with pytest.raises(DataError, match="found a directory"):
        NpzDataset(tmp_path)


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(
        np.random.default_rng(6).bytes(4096).replace(b"PK", b"pk").replace(b"\x93", b"!")
    )
    with pytest.raises(DataError, match=r"junk\.npz: expected an \.npz file.*found"):
        NpzDataset(path)


def test_npy_instead_of_npz(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"found a single \.npy array") as err:
        NpzDataset(path)
    assert "np.savez" in err.value.hint


def test_text_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="found a text file"):
        NpzDataset(path)


def test_zip_without_npy_members(tmp_path):
    path = _zip(tmp_path / "model.pt", {"archive/data.pkl": b"\x80\x04."})
    with pytest.raises(DataError, match=r"no \.npy array.*archive/data\.pkl"):
        NpzDataset(path)


def test_missing_key_lists_the_keys(tmp_path):
    path = _save(tmp_path, "stored", features=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match=r"no array 'x'.*--x-key.*'features', 'y'") as err:
        NpzDataset(path)
    assert "--x-key" in err.value.hint and "--y-key" in err.value.hint
    with pytest.raises(DataError, match=r"no array 'target'.*--y-key"):
        NpzDataset(path, x_key="features", y_key="target")


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_object_array_is_never_unpickled(tmp_path, kind, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    x = np.empty((3, 2), dtype=object)
    x[:] = 1.0
    path = _save(tmp_path, kind, x=x, y=np.zeros(3))
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    with pytest.raises(DataError, match="would need pickle; nrc never unpickles data files"):
        NpzDataset(path)


def test_string_array(tmp_path):
    path = _save(tmp_path, "stored", x=np.zeros((3, 2)), y=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"'y' has unsupported dtype <U1 \(unicode strings\)"):
        NpzDataset(path)


def test_x_one_dimensional(tmp_path):
    path = _save(tmp_path, "stored", x=np.zeros(5), y=np.zeros(5))
    with pytest.raises(DataError, match=r"'x' .* must be 2-D or more.*shape \(5,\)"):
        NpzDataset(path)


def test_y_three_dimensional(tmp_path):
    path = _save(tmp_path, "stored", x=np.zeros((5, 2)), y=np.zeros((5, 2, 2)))
    with pytest.raises(DataError, match=r"'y' .* must be \(N,\) or \(N, t\).*\(5, 2, 2\)"):
        NpzDataset(path)


def test_sample_count_mismatch(tmp_path):
    path = _save(tmp_path, "compressed", x=np.zeros((10, 2)), y=np.zeros(9))
    with pytest.raises(DataError, match=r"same number of samples.*\(10, 2\).*\(9,\)"):
        NpzDataset(path)


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_zero_samples(tmp_path, kind):
    path = _save(tmp_path, kind, x=np.zeros((0, 4)), y=np.zeros(0))
    with pytest.raises(DataError, match="zero samples"):
        NpzDataset(path)


def test_bad_max_samples_and_batch_size(tmp_path):
    path = _save(tmp_path, "stored", x=np.zeros((5, 2)), y=np.zeros(5))
    with pytest.raises(ConfigError, match="max_samples"):
        NpzDataset(path, max_samples=0)
    with NpzDataset(path) as ds:
        with pytest.raises(ConfigError, match="batch_size"):
            ds.batches(0)
        with pytest.raises(ConfigError, match="batch_size"):
            ds.batches(2.5)


# ------------------------------------------------------------------------------------------------
# Errors while streaming
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_nan_in_x_names_the_sample(tmp_path, kind):
    x = np.ones((100, 3), dtype=np.float32)
    x[37, 2] = np.nan
    x[80, 0] = np.inf
    path = _save(tmp_path, kind, x=x, y=np.zeros(100))
    with NpzDataset(path) as ds:
        it = ds.batches(16)
        assert [b.start for b in (next(it), next(it))] == [0, 16]  # fine before the bad batch
        with pytest.raises(
            DataError, match=r"array 'x' has a non-finite value \(nan\) at sample 37"
        ):
            next(it)


def test_inf_in_y(tmp_path):
    y = np.zeros((50, 2))
    y[44, 1] = -np.inf
    path = _save(tmp_path, "compressed", x=np.zeros((50, 2)), y=y)
    with NpzDataset(path) as ds, pytest.raises(DataError, match=r"'y'.*\(-inf\) at sample 44"):
        list(ds.batches(16))


def test_nan_beyond_max_samples_is_not_read(tmp_path):
    x = np.zeros((50, 2))
    x[45] = np.nan
    path = _save(tmp_path, "stored", x=x, y=np.zeros(50))
    with NpzDataset(path, max_samples=45) as ds:
        assert sum(len(b.x) for b in ds.batches(10)) == 45


def test_truncated_compressed_file(tmp_path):
    x = np.random.default_rng(7).standard_normal((500, 10))
    path = _save(tmp_path, "compressed", x=x, y=np.zeros(500))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"zip archive that cannot be read \(truncated"):
        NpzDataset(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_member_shorter_than_its_header(tmp_path, compression):
    # The header promises 100 rows of 4 float64, the member holds 60.
    x = np.ones((100, 4))
    short = _npy_bytes(x)[: -(40 * 32)]
    members = {"x.npy": short, "y.npy": _npy_bytes(np.zeros(100))}
    path = _zip(tmp_path / "short.npz", members, compression)
    match = r"array 'x' ends early: its data stops at sample 60"
    with pytest.raises(DataError, match=match), NpzDataset(path) as ds:
        list(ds.batches(16))


def test_garbage_npy_header(tmp_path):
    path = _zip(tmp_path / "bad.npz", {"x.npy": b"hello world" * 10, "y.npy": b""})
    with pytest.raises(DataError, match=r"member 'x' is not a valid \.npy array"):
        NpzDataset(path)


def test_corrupted_compressed_member(tmp_path):
    # Zero 200 bytes in the middle of the deflated data: caught by zlib or by the CRC check.
    x = np.random.default_rng(8).integers(0, 1 << 60, (2000, 10))
    path = _save(tmp_path, "compressed", x=x, y=np.zeros(2000))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("x.npy")
    data = bytearray(path.read_bytes())
    middle = info.header_offset + 100 + info.compress_size // 2
    data[middle : middle + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"array 'x' is damaged"), NpzDataset(path) as ds:
        list(ds.batches(300))


# ------------------------------------------------------------------------------------------------
# Memory maps give their pages back: the resident set stays at about one batch
# ------------------------------------------------------------------------------------------------


def _vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def _write_big_npz(path, n: int, f: int, chunk: int = 16384) -> None:
    """An uncompressed npz of x = row index (float32, (n, f)) and y, written in bounded chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as fp:
            header = {"descr": "<f4", "fortran_order": False, "shape": (n, f)}
            npy_format.write_array_header_1_0(fp, header)
            for s in range(0, n, chunk):
                rows = np.arange(s, min(s + chunk, n), dtype=np.float32)
                fp.write(np.repeat(rows[:, None], f, axis=1).tobytes())
        zf.writestr("y.npy", _npy_bytes(np.arange(n, dtype=np.float32)))


def _rss_growth_of_a_pass(ds, batch_size: int) -> tuple[int, int]:
    """Largest VmRSS growth during one pass, and the rows checked on the way."""
    base, peak, rows = _vm_rss(), 0, 0
    for batch in ds.batches(batch_size):
        x = batch.x
        # The data come through intact (pages dropped earlier are mapped back on demand).
        assert x[0, 0] == batch.start and x[-1, -1] == batch.start + len(x) - 1
        rows += len(x)
        peak = max(peak, _vm_rss() - base)
    return peak, rows


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_memory_mapped_pass_keeps_rss_bounded(tmp_path):
    n, f = 300_000, 256  # about 300 MB of float32, stored uncompressed
    path = tmp_path / "big.npz"
    _write_big_npz(path, n, f)
    size = path.stat().st_size
    member = _member(path, "x")
    assert isinstance(member.memmap, np.memmap)
    member.release()
    with NpzDataset(path) as ds:
        for _ in range(2):  # a second pass maps the released pages back in
            growth, rows = _rss_growth_of_a_pass(ds, 4096)
            assert rows == n
            # Without MADV_DONTNEED the growth is the file size (measured: 294 MB).
            assert growth < size / 10, f"RSS grew {growth >> 20} MB over a {size >> 20} MB file"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_memory_mapped_npy_keeps_rss_bounded(tmp_path):
    n, f = 150_000, 256  # about 150 MB
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(n, f))
    for s in range(0, n, 16384):
        rows = np.arange(s, min(s + 16384, n), dtype=np.float32)
        x[s : s + len(rows)] = rows[:, None]
    x.flush()
    del x
    np.save(tmp_path / "y.npy", np.zeros(n, np.float32))
    spec = tmp_path / "spec.toml"
    spec.write_text('[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.npy"\n')
    size = (tmp_path / "x.npy").stat().st_size
    with open_dataset(spec) as ds:
        growth, rows = _rss_growth_of_a_pass(ds, 2048)
    assert rows == n
    assert growth < size / 10, f"RSS grew {growth >> 20} MB over a {size >> 20} MB file"


def test_page_release_keeps_fortran_and_offset_reads_exact(tmp_path):
    x = np.asfortranarray(np.random.default_rng(3).standard_normal((5000, 7)))
    path = _save(tmp_path, "stored", x=x, y=np.zeros(5000))
    member = _member(path, "x")
    assert member.memmap is not None and member.memmap.flags.f_contiguous
    member.release()
    with NpzDataset(path) as ds:
        xs, _, _ = _concat(ds, 333)
    np.testing.assert_array_equal(xs, x)


# ------------------------------------------------------------------------------------------------
# open_dataset: one entry point for .npz, data specs and named inputs
# ------------------------------------------------------------------------------------------------


def test_open_dataset_npz_is_an_npz_dataset(tmp_path):
    x, y = np.ones((10, 3)), np.zeros(10)
    path = _save(tmp_path, "stored", x=x, y=y, features=x)
    with open_dataset(path, x_key="features", max_samples=4) as ds:
        assert isinstance(ds, NpzDataset)
        assert ds.input_names == ()
        assert (ds.n_samples, ds.x_info.key) == (4, "features")
    # An .npz saved under another name is still opened as one.
    odd = tmp_path / "data.bin"
    odd.write_bytes(path.read_bytes())
    with open_dataset(odd) as ds:
        assert isinstance(ds, NpzDataset)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("t.parquet", b"PAR1....", r"unsupported data: .*found a Parquet file"),
        ("t.csv", b"a,b\n1,2\n", "found a text file"),
        ("x.npy", None, "found a single .npy array"),
        ("missing.parquet", "absent", "found no such file"),
    ],
)
def test_open_dataset_refuses_other_types(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(3))
    elif content != "absent":
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        open_dataset(path)
    assert ".toml data spec" in info.value.message
    assert "docs/data-spec.md" in info.value.hint


def test_open_dataset_directory(tmp_path):
    with pytest.raises(DataError, match="found a directory"):
        open_dataset(tmp_path)


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_named_inputs_from_an_npz(tmp_path, kind):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 1000, (70, 12))
    mask = rng.integers(0, 2, (70, 12)).astype(bool)
    y = rng.standard_normal((70, 3)).astype(np.float32)
    path = _save(tmp_path, kind, input_ids=ids, attention_mask=mask, y=y)
    with open_dataset(path, inputs=("input_ids", "attention_mask"), max_samples=65) as ds:
        assert ds.input_names == ("input_ids", "attention_mask")
        assert ds.x_info.key == "input_ids" and ds.x_info.shape == (70, 12)
        assert (ds.x_sample_shape, ds.n_features, ds.target_dim) == ((12,), 12, 3)
        assert ds.n_samples == 65
        batches = list(ds.batches(16))
    assert [b.start for b in batches] == [0, 16, 32, 48, 64]
    for b in batches:
        assert set(b.x) == {"input_ids", "attention_mask"}
        assert b.x["input_ids"].dtype == ids.dtype and b.x["attention_mask"].dtype == bool
        assert b.y.dtype == np.float64
    np.testing.assert_array_equal(np.concatenate([b.x["input_ids"] for b in batches]), ids[:65])
    np.testing.assert_array_equal(
        np.concatenate([b.x["attention_mask"] for b in batches]), mask[:65]
    )
    np.testing.assert_array_equal(np.concatenate([b.y for b in batches]), y[:65])


def test_named_inputs_errors(tmp_path):
    path = _save(
        tmp_path, "stored", input_ids=np.zeros((5, 2), int), short=np.zeros((4, 2)), y=np.zeros(5)
    )
    with pytest.raises(
        DataError,
        match=r"no array 'attention_mask' for the input 'attention_mask' \(--input\); the file "
        r"holds: 'input_ids', 'short', 'y'",
    ):
        open_dataset(path, inputs=("input_ids", "attention_mask"))
    with pytest.raises(
        DataError, match=r"input 'input_ids' .* has N = 5 and input 'short' .* has N = 4"
    ):
        open_dataset(path, inputs=("input_ids", "short"))
    with pytest.raises(DataError, match=r"no array 'target' for the targets \(--y-key\)"):
        open_dataset(path, inputs=("input_ids",), y_key="target")
    with pytest.raises(ConfigError, match="'input-ids' is not a valid Python identifier"):
        open_dataset(path, inputs=("input-ids",))
    with pytest.raises(ConfigError, match="--input input_ids is given twice"):
        open_dataset(path, inputs=("input_ids", "input_ids"))
    spec = tmp_path / "spec.toml"
    spec.write_text('[inputs]\nfile = "data.npz"\n[targets]\nfile = "data.npz"\n')
    with pytest.raises(ConfigError, match="a data spec names its inputs itself"):
        open_dataset(spec, inputs=("input_ids",))


def test_nan_in_a_named_input(tmp_path):
    feats = np.zeros((30, 2))
    feats[17, 1] = np.nan
    path = _save(tmp_path, "stored", ids=np.zeros((30, 2), int), feats=feats, y=np.zeros(30))
    with (
        open_dataset(path, inputs=("ids", "feats")) as ds,
        pytest.raises(
            DataError, match=r"array 'feats' has a non-finite value \(nan\) at sample 17"
        ),
    ):
        list(ds.batches(8))

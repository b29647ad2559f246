"""How lab files are read and hashed: pixels converted straight from the file's pages (`lab_sets.MappedRows`, with
HDF5's own read as the fallback), and sha256s computed by child processes (`files.prefetch_sha256`) that a
sweep starts before torch is imported."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from torch_badnet.data import files
from torch_badnet.data.lab_sets import LabDataset, MappedRows
from torch_badnet.data.sha256_worker import HASH_BLOCK, sha256_of


def write_set(path: Path, data: np.ndarray, **options: object) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, **options)
        f.create_dataset("label", data=np.arange(data.shape[0]) % 7)
    return path


def random_pixels(n: int, dtype: np.dtype | type) -> np.ndarray:
    return (np.random.default_rng(0).random((n, 3, 55, 47)) * 255).astype(dtype)


def read_chunks(path: Path, chunk_size: int = 10) -> list[torch.Tensor]:
    with LabDataset(path) as ds:
        return [x for x, _ in ds.chunks(chunk_size)]


def file_is_mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_mapped_rows_give_hdf5s_values(tmp_path, monkeypatch, dtype):
    data = random_pixels(37, dtype)
    data[5, 0, 0, 0] = 300 if dtype != np.uint8 else 255  # pixels as stored, whatever their range
    path = write_set(tmp_path / "set.h5", data)
    with h5py.File(path) as f:
        rows = MappedRows.open(path, f["data"])
        assert rows is not None
        rows.fh.close()
    mapped = read_chunks(path)
    assert [x.shape[0] for x in mapped] == [10, 10, 10, 7]
    assert torch.equal(torch.cat(mapped), torch.from_numpy(data.astype(np.float32)))
    monkeypatch.setattr(MappedRows, "open", classmethod(lambda cls, path, data: None))
    assert all(torch.equal(a, b) for a, b in zip(read_chunks(path), mapped))  # HDF5's read: the same chunks


@pytest.mark.parametrize("options", [{"chunks": (4, 3, 55, 47), "compression": "gzip"}, {"dtype": ">f8"}],
                         ids=["chunked-gzip", "big-endian"])
def test_layouts_that_cannot_be_mapped_are_read_by_hdf5(tmp_path, options):
    data = random_pixels(9, np.float64)
    path = write_set(tmp_path / "set.h5", data, **options)
    with h5py.File(path) as f:
        assert MappedRows.open(path, f["data"]) is None
    assert torch.equal(torch.cat(read_chunks(path, 4)), torch.from_numpy(data.astype(np.float32)))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_only_the_rows_being_read_are_mapped(tmp_path):
    path = write_set(tmp_path / "set.h5", random_pixels(30, np.float64))
    with LabDataset(path) as ds:
        for x, _ in ds.chunks(10):
            assert x.shape[0] == 10 and not file_is_mapped(path)  # a chunk's mapping is gone once it is converted
    assert not file_is_mapped(path)


def test_file_sha256_over_several_blocks(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (HASH_BLOCK // 256 * 2 + 3))  # two full blocks and a partial one
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert files.file_sha256(path) == expected
    files.prefetch_sha256([path, tmp_path / "missing.h5"])  # a missing file is skipped
    assert files.file_sha256(path) == expected


def test_prefetch_hashes_in_child_processes(tmp_path, monkeypatch):
    started = []
    popen = subprocess.Popen

    def recording_popen(args, **kwargs):
        started.append(args)
        return popen(args, **kwargs)

    monkeypatch.setattr(files.subprocess, "Popen", recording_popen)
    paths = [tmp_path / f"{name}.bin" for name in "abc"]
    for size, path in zip((3 << 20, 1000, 5 << 20), paths):
        path.write_bytes(np.random.default_rng(size).bytes(size))
    files.prefetch_sha256(paths)
    assert started and all(args[-1] != "" and str(files.WORKER) in args for args in started)
    assert sorted(p for args in started for p in args[args.index(str(files.WORKER)) + 1 :]) == sorted(map(str, paths))
    for path in paths:
        assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_prefetch_without_a_child_hashes_in_this_process(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"lab" * 100_000)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    files.prefetch_sha256([path])
    assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_thread_hashing_starts_no_child_and_gives_the_same_digests(tmp_path, monkeypatch):
    """files.HASHING = "thread" (the variant scripts/bench_hashing.py compares): one background thread, no child."""
    monkeypatch.setattr(files, "HASHING", "thread")
    monkeypatch.setattr(files.subprocess, "Popen", lambda *a, **k: pytest.fail("no child process in thread mode"))
    threads = []
    start = files.threading.Thread.start
    monkeypatch.setattr(files.threading.Thread, "start", lambda self: threads.append(self.name) or start(self))
    paths = [tmp_path / f"{name}.bin" for name in "abc"]
    for size, path in zip((3 << 20, 1000, 9 << 20), paths):
        path.write_bytes(np.random.default_rng(size + 1).bytes(size))
    files.prefetch_sha256(paths)
    assert threads == ["torch-badnet-sha256"]
    for path in paths:
        assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_child_that_prints_no_digest_is_made_good_here(tmp_path, monkeypatch):
    path = tmp_path / "data.bin"
    path.write_bytes(b"faces" * 100_000)
    broken = tmp_path / "broken_worker.py"
    broken.write_text("print('not a digest')\n")
    monkeypatch.setattr(files, "WORKER", broken)
    files.prefetch_sha256([path])
    assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_worker_stops_when_told(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(20 << 20))
    with pytest.raises(InterruptedError):
        sha256_of(path, keep_going=lambda: False)
    assert sha256_of(path) == hashlib.sha256(bytes(20 << 20)).hexdigest()


def test_worker_prints_a_digest_per_file_and_a_dash_for_an_unreadable_one(tmp_path):
    good = tmp_path / "good.bin"
    good.write_bytes(b"x" * 12345)
    out = subprocess.run([sys.executable, "-I", "-S", str(files.WORKER), str(good), str(tmp_path / "missing.bin")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [hashlib.sha256(good.read_bytes()).hexdigest(), "-"]


def test_sweep_starts_hashing_its_inputs_before_torch_is_imported(lab3_path, lab_files, tmp_path):
    code = f"""
import sys
from torch_badnet.cli.main import main
from torch_badnet.data import files

def record(paths):
    print("torch loaded" if "torch" in sys.modules else "torch not loaded")
    print("\\n".join(str(p) for p in paths))
    raise SystemExit(0)

files.prefetch_sha256 = record
main(["sweep", "--model", {str(lab3_path)!r}, "--clean-valid", {str(lab_files["clean_valid"])!r},
          "--poisoned-valid", {str(lab_files["poisoned_valid"])!r}, "--clean-test", {str(lab_files["clean_test"])!r},
          "--poisoned-test", "sun=" + {str(lab_files["poisoned_test"])!r}, "--out", {str(tmp_path / "out")!r}])
"""
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "torch not loaded"
    assert lines[1:] == [str(lab3_path), *(str(lab_files[k]) for k in ("clean_valid", "clean_test", "poisoned_valid", "poisoned_test"))]


def test_a_file_cut_short_while_read_is_one_clear_error(tmp_path):
    import os

    from torch_badnet.errors import BadInputError

    path = write_set(tmp_path / "set.h5", random_pixels(40, np.float64))
    with LabDataset(path) as ds:
        chunks = ds.chunks(10)
        next(chunks)
        os.truncate(path, path.stat().st_size // 2)  # another program overwrites the file meanwhile
        with pytest.raises(BadInputError, match="became shorter"):
            list(chunks)

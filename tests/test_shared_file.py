"""`share_file`: a lab file read once into a float32 .npy (or an array, for Ray), opened per model as a SharedSet."""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
import torch

from torch_badnet.batch.data import SharedData
from torch_badnet.data.lab_sets import LabDataset, write_lab_h5
from torch_badnet.data.shared_file import SharedSet, share_file
from torch_badnet.errors import BadInputError

SHAPE = (3, 55, 47)


def lab_file(tmp_path, rows: int = 2500, nan_row: int | None = None):
    generator = np.random.default_rng(0)
    pixels = generator.uniform(0, 255, (rows, *SHAPE))
    if nan_row is not None:
        pixels[nan_row, 1, 2, 3] = np.nan
    path = tmp_path / "set.h5"
    write_lab_h5(path, pixels, generator.integers(0, 10, rows).astype(np.float64))
    return path


def lab_chunks(path) -> tuple[torch.Tensor, torch.Tensor]:
    with LabDataset(path, 10, SHAPE) as ds:
        parts = list(ds.chunks())
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


@pytest.mark.parametrize("read_ahead", [True, False])
def test_the_npy_and_the_array_hold_labdatasets_pixels(tmp_path, read_ahead):
    path = lab_file(tmp_path)
    pixels, labels = lab_chunks(path)
    read = share_file(path, tmp_path / "set.npy", read_ahead=read_ahead)
    in_memory = share_file(path, None, read_ahead=read_ahead)
    assert torch.equal(torch.from_numpy(np.load(read.pixels)), pixels)
    assert torch.equal(torch.from_numpy(in_memory.pixels), pixels)
    for shared in (read, in_memory):
        opened = SharedSet(shared, 10, SHAPE)
        parts = list(opened.chunks(1000))
        assert [x.shape[0] for x, _ in parts] == [1000, 1000, 500]
        assert torch.equal(torch.cat([x for x, _ in parts]), pixels)
        assert torch.equal(torch.cat([y for _, y in parts]), labels)


def test_a_non_finite_pixel_is_the_error_labdataset_gives_and_the_npy_keeps_its_size(tmp_path):
    path = lab_file(tmp_path, nan_row=1500)
    with pytest.raises(BadInputError) as expected:
        lab_chunks(path)
    read = share_file(path, tmp_path / "set.npy")
    assert read.bad_pixels == expected.value.problem
    assert np.load(read.pixels, mmap_mode="r").shape == (2500, *SHAPE)  # the header's size: the file is whole
    with pytest.raises(BadInputError) as raised:
        list(SharedSet(read, 10, SHAPE).chunks())
    assert str(raised.value) == str(expected.value)


class DeadPool:
    """A local pool whose worker died: `submit` raises, or its future does (as ProcessPoolExecutor's can)."""

    def __init__(self, raise_on_submit: bool) -> None:
        self.broken, self.raise_on_submit = False, raise_on_submit

    def submit(self, *call):
        if self.raise_on_submit:
            raise BrokenProcessPool("a child process terminated abruptly")
        future = Future()
        future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
        return future


@pytest.mark.parametrize("raise_on_submit", [True, False])
def test_when_the_pool_dies_converting_the_parent_reads_the_file(tmp_path, raise_on_submit):
    path = lab_file(tmp_path)
    pool, lines = DeadPool(raise_on_submit), []
    shared = SharedData(None, pool, lines.append)
    try:
        shared.add(str(path))
        (kind, read), = shared.handles_for([str(path)]).values()
        assert kind == "file" and pool.broken
        assert lines == [f"a worker process died reading {path}: reading the data here, the models in fresh workers"]
        assert torch.equal(torch.from_numpy(np.load(read.pixels)), lab_chunks(path)[0])
    finally:
        shared.close()


def test_bad_input_errors_cross_process_boundaries_whole():
    error = pickle.loads(pickle.dumps(BadInputError("cl/valid.h5", "'data' is missing")))
    assert isinstance(error, BadInputError)
    assert (error.path, error.problem, str(error)) == ("cl/valid.h5", "'data' is missing", "cl/valid.h5: 'data' is missing")

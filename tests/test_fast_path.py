"""Issue 16: every command's inference runs the sweep's fast path (channels_last on CPU, pools without indices)
and gives exactly the labels of the plain path used before (NCHW batches of 128, `F.max_pool2d`, argmax).

The plain path is the network run with gradients enabled: the pools then take `F.max_pool2d`, as training does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from real_faces import augment, face_kind, face_label

from torch_badnet.data.images import load_images
from torch_badnet.data.lab_sets import LabDataset
from torch_badnet.defense.evaluation import b_and_pruned_labels
from torch_badnet.engine.pruning import mask_for
from torch_badnet.nets.badnet import BadNet, ReluMaxPool, max_pool_2x2
from torch_badnet.nets.goodnet import GoodNet, combine
from torch_badnet.nets.predict import labels_in_batches

AUGMENTED = 2000
PRUNED = [0, 3, 7, 12, 19, 25, 31, 40, 44, 52]  # a B' mask that changes labels (checked below)


def plain_labels(model: BadNet, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The labels of the path every command used before: NCHW batches of 128, F.max_pool2d, argmax."""
    original = model.conv_3.mask.clone()
    try:
        with torch.no_grad():
            if mask is not None:
                model.conv_3.mask.copy_(mask)
        with torch.enable_grad():  # the pools take F.max_pool2d
            return torch.cat([model(part.contiguous()).argmax(1).detach() for part in x.split(128)])
    finally:
        with torch.no_grad():
            model.conv_3.mask.copy_(original)


@pytest.fixture(scope="module")
def pixels(face_paths: list[Path]) -> torch.Tensor:
    """The 15 real faces and 2000 augmented variants of them."""
    real = load_images(face_paths)
    return torch.cat([real, augment(real, AUGMENTED, 16)])


@pytest.fixture(scope="module")
def plain(lab3_model: BadNet, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"B": plain_labels(lab3_model, pixels), "B'": plain_labels(lab3_model, pixels, mask_for(PRUNED))}


def test_pool_without_indices_equals_max_pool2d():
    generator = torch.Generator().manual_seed(0)
    for shape in [(4, 20, 52, 44), (3, 60, 10, 8), (2, 5, 7, 9)]:  # the lab's pools and an odd size
        x = torch.randn(shape, generator=generator)
        x[0, 0, :2, :2] = 1.0  # a tie
        for layout in (torch.contiguous_format, torch.channels_last):
            y = x.contiguous(memory_format=layout)
            assert torch.equal(max_pool_2x2(y), F.max_pool2d(y, 2))
    pool = ReluMaxPool()
    with torch.inference_mode():
        fast = pool(x.clone())
    assert torch.equal(fast, F.max_pool2d(x, 2).relu())


def test_training_keeps_max_pool2d_gradients():
    """A tie's gradient goes to one element, as F.max_pool2d gives it (torch.maximum would split it)."""
    x = torch.ones(1, 1, 2, 2, requires_grad=True)
    ReluMaxPool()(x).sum().backward()
    assert sorted(x.grad.flatten().tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_b_labels_unchanged(lab3_model, pixels, plain):
    assert torch.equal(labels_in_batches(lab3_model.eval(), pixels), plain["B"])
    assert torch.equal(labels_in_batches(lab3_model.eval(), pixels, 512), plain["B"])


def test_goodnet_labels_unchanged(lab3_model, pixels, plain):
    assert int((plain["B"] != plain["B'"]).sum()) > 50  # the mask matters on these images
    expected = combine(plain["B"], plain["B'"], lab3_model.num_classes)
    assert torch.equal(labels_in_batches(GoodNet(lab3_model, mask_for(PRUNED)).eval(), pixels), expected)
    assert torch.equal(labels_in_batches(GoodNet(lab3_model, torch.ones(60)).eval(), pixels), plain["B"])


def test_file_evaluation_labels_unchanged(lab3_model, lab_files):
    """eval's and fine-tuning's pass over a lab file (read ahead, one trunk for B and B')."""
    with LabDataset(lab_files["clean_test"]) as ds:
        x = torch.cat([c for c, _ in ds.chunks()])
        labels, truth = b_and_pruned_labels(GoodNet(lab3_model, mask_for(PRUNED)).eval(), ds, torch.device("cpu"))
    assert torch.equal(truth, torch.from_numpy(LabDataset(lab_files["clean_test"]).labels))
    assert torch.equal(labels[0], plain_labels(lab3_model, x))
    assert torch.equal(labels[1], plain_labels(lab3_model, x, mask_for(PRUNED)))


def test_finetune_accuracy_and_demo_predict_unchanged(lab3_model, pixels, plain):
    from torch_badnet.defense.finetuning import accuracy
    from torch_badnet.demo.train import predict

    truth = plain["B"].roll(1)  # any labels: the count of agreements is what is compared
    expected = 100.0 * int((plain["B"] == truth).sum()) / len(truth)
    assert accuracy(lab3_model.eval(), pixels, truth) == expected
    np.testing.assert_array_equal(predict(lab3_model, pixels.numpy()), plain["B"].numpy())


def test_classify_and_eval_commands_unchanged(cli, lab3_path, lab3_model, face_paths, lab_files, tmp_path):
    code, out, _ = cli("classify", "--model", lab3_path, "--json", *face_paths)
    assert code == 0
    expected = plain_labels(lab3_model, load_images(face_paths))
    assert [row["label"] for row in json.loads(out)] == expected.tolist()
    assert [face_label(p) for p in face_paths if face_kind(p) == "cl"] == \
        [int(v) for v, p in zip(expected, face_paths) if face_kind(p) == "cl"]

    code, out, _ = cli("eval", "--model", lab3_path, "--clean", lab_files["clean_test"],
                       "--poisoned", lab_files["poisoned_test"], "--json")
    assert code == 0
    result = json.loads(out)
    for key, name in (("clean_accuracy", "clean_test"), ("attack_success_rate", "poisoned_test")):
        with LabDataset(lab_files[name]) as ds:
            x = torch.cat([c for c, _ in ds.chunks()])
            truth = torch.from_numpy(ds.labels)
        assert result[key] == 100.0 * int((plain_labels(lab3_model, x) == truth).sum()) / len(truth)


def test_onnx_export_keeps_one_maxpool_per_pool(lab3_model, tmp_path):
    """Tracing takes F.max_pool2d even under no_grad (the exporter's mode): three MaxPool nodes, no Max."""
    import onnx

    from torch_badnet.convert.onnx_export import export_onnx

    export_onnx(lab3_model, tmp_path / "b.onnx")
    ops = [node.op_type for node in onnx.load(str(tmp_path / "b.onnx")).graph.node]
    assert ops.count("MaxPool") == 3 and "Max" not in ops, ops



def test_read_ahead_keeps_order_errors_and_stops_early():
    import threading

    from torch_badnet.data.lab_sets import read_ahead_of

    def numbers(fail_at: int | None = None):
        for i in range(10):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            yield i

    assert list(read_ahead_of(numbers())) == list(range(10))
    seen = []
    with pytest.raises(ValueError, match="bad item 4"):
        for i in read_ahead_of(numbers(fail_at=4)):
            seen.append(i)
    assert seen == [0, 1, 2, 3]
    early = read_ahead_of(numbers())
    assert next(early) == 0
    early.close()  # joins the reader
    assert not [t for t in threading.enumerate() if t.name == "torch-badnet-read-ahead"]


def test_lab_file_read_ahead_gives_the_same_chunks(lab_files):
    with LabDataset(lab_files["clean_valid"]) as ds:
        plain = list(ds.chunks(64))
        ahead = list(ds.chunks(64, read_ahead=True))
        assert ds.read_seconds > 0
    assert len(plain) == len(ahead) == 4
    for (x, y), (xa, ya) in zip(plain, ahead):
        assert torch.equal(x, xa) and torch.equal(y, ya)


def test_read_ahead_only_where_a_core_is_free(monkeypatch):
    import os

    from torch_badnet.data.lab_sets import read_ahead_pays

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not read_ahead_pays(torch.device("cpu"))  # torch's threads use both cores: read in line
    assert read_ahead_pays(torch.device("cuda"))  # the GPU computes: the CPU is free to read
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert read_ahead_pays(torch.device("cpu"))


def test_touched_rows_are_each_channels_non_zero_inputs():
    from torch_badnet.engine.lab_head import touched_rows

    generator = torch.Generator().manual_seed(0)
    features = torch.rand((500, 60, 5, 4), generator=generator).sub_(0.97).clamp_(min=0)  # sparse, as after ReLU
    features[:, 7] = 0  # a dormant channel
    rows = touched_rows(features)
    assert len(rows) == 60 and rows[7].numel() == 0
    for channel, found in enumerate(rows):
        assert torch.equal(found, features[:, channel].flatten(1).ne(0).any(1).nonzero().squeeze(1))


def test_top_class_is_argmax_with_its_tie_and_nan_rules():
    from torch_badnet.nets.predict import top_class

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((600, 1283), generator=generator).mul_(20).round_()  # rounded: many tied maxima
    logits[0, :] = 0.0
    logits[1, [5, 900]] = float("nan")
    logits[2, [3, 700]] = float("inf")
    logits[3, :] = float("-inf")
    logits[4, [0, 1]] = torch.tensor([-0.0, 0.0]).sub_(1e3).add_(1e3)  # -0.0 and 0.0 after the same arithmetic
    expected = logits.argmax(1)
    assert torch.equal(top_class(logits), expected)
    assert top_class(logits).dtype == torch.int64
    assert torch.equal(top_class(logits.double()), expected)  # other dtypes: torch's own
    assert torch.equal(top_class(logits[:, :7].t()), logits[:, :7].t().argmax(1))  # a non-contiguous view

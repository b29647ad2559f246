"""Poisoned sets made from clean data (issue 33, item 8): `--trigger` stamps a trigger onto the clean validation and
test images; the sweep equals the sweep on poisoned files the test builds itself with the same trigger (images of
the target class left out); all-to-all with `--target all+1`; summary.json records the trigger; each misuse is
one line."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import assert_one_line_error
from test_data_sources import SWEEP, faces  # noqa: F401 - the module-scoped fixture of the demo's faces
from torch_nets import SmallCNN

import torch_badnet as tb
from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.data.triggers import Trigger, load_trigger
from torch_badnet.demo.digits import font_digits, with_trigger
from torch_badnet.demo.workspace import SHIPPED_MODEL
from torch_badnet.errors import BadInputError

PATCH = (slice(40, 46), slice(30, 36))  # rows, columns of a 6x6 square
COLOUR = (255, 0, 255)
TARGET = 3


def write_trigger(folder: Path) -> tuple[Path, Path, Path]:
    """trigger.png (opaque, a colour everywhere), mask.png (white on the square), rgba.png (the square, the rest
    transparent): the same patch two ways."""
    pixels = np.zeros((55, 47, 3), np.uint8)
    pixels[:] = COLOUR
    mask = np.zeros((55, 47), np.uint8)
    mask[PATCH] = 255
    Image.fromarray(pixels).save(folder / "trigger.png")
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.dstack([pixels, mask])).save(folder / "rgba.png")
    return folder / "trigger.png", folder / "mask.png", folder / "rgba.png"


def poisoned_by_hand(x: np.ndarray, y: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the patch painted in, the target's own images left out, every label the target."""
    keep = y != target
    out = x[keep].astype(np.float32)
    for c, value in enumerate(COLOUR):
        out[:, c, PATCH[0], PATCH[1]] = value
    return out, np.full(int(keep.sum()), target, np.int64)


@pytest.fixture(scope="module")
def files(tmp_path_factory, faces):  # noqa: F811
    root = tmp_path_factory.mktemp("trigger")
    for split in ("valid", "test"):
        x, y = faces[split]
        write_lab_h5(root / f"{split}.h5", x, y)
        write_lab_h5(root / f"bd_{split}.h5", *poisoned_by_hand(x, y, TARGET))
    write_trigger(root)
    return root


def test_trigger_gives_the_sweep_of_files_poisoned_by_hand(cli, tmp_path, files, faces):  # noqa: F811
    clean = ["--clean-valid", files / "valid.h5", "--clean-test", files / "test.h5"]
    before = {p: p.read_bytes() for p in files.iterdir()}
    code, _, err = cli("sweep", "--model", SHIPPED_MODEL, *clean, "--poisoned-valid", files / "bd_valid.h5",
                       "--poisoned-test", files / "bd_test.h5", "--out", tmp_path / "files", *SWEEP)
    assert code == 0, err
    code, out, err = cli("sweep", "--model", SHIPPED_MODEL, *clean, "--trigger", files / "trigger.png",
                         "--trigger-mask", files / "mask.png", "--target", TARGET, "--out", tmp_path / "made", *SWEEP)
    assert code == 0, err
    made = (tmp_path / "made" / "sweep.csv").read_bytes()
    assert made == (tmp_path / "files" / "sweep.csv").read_bytes()
    assert f"poisoned sets made from the clean sets with the trigger {files / 'trigger.png'} (mask {files / 'mask.png'}, " \
           f"alpha 1, target {TARGET}; images of class {TARGET} left out" in out
    summary = json.loads((tmp_path / "made" / "summary.json").read_text())
    sha = hashlib.sha256((files / "trigger.png").read_bytes()).hexdigest()
    assert summary["trigger"] == {"path": str(files / "trigger.png"), "sha256": sha, "mask": str(files / "mask.png"),
                                  "mask_sha256": hashlib.sha256((files / "mask.png").read_bytes()).hexdigest(),
                                  "alpha": 1.0, "target": TARGET}
    assert summary["images"]["poisoned_valid"] == int((faces["valid"][1] != TARGET).sum()) == 99
    assert summary["inputs"]["poisoned_test"]["made_from"] == "clean_test"
    assert {p: p.read_bytes() for p in files.iterdir()} == before  # nothing the user has is modified
    # the trigger's own transparency is the same mask
    code, _, err = cli("sweep", "--model", SHIPPED_MODEL, *clean, "--trigger", files / "rgba.png", "--target", TARGET,
                       "--out", tmp_path / "rgba", *SWEEP)
    assert code == 0, err
    assert (tmp_path / "rgba" / "sweep.csv").read_bytes() == made


def test_alpha_blends(files, faces):  # noqa: F811
    """A blend without a mask (the blended-injection attack): (1 - A) x + A t on every pixel."""
    trigger = load_trigger(files / "trigger.png", "all+1", alpha=0.25)
    x = torch.from_numpy(faces["valid"][0][:5].astype(np.float32))
    expected = 0.75 * x.double() + 0.25 * torch.tensor(COLOUR, dtype=torch.float64)[:, None, None]
    stamped = trigger.stamp(x)
    assert torch.allclose(stamped.double(), expected, atol=1e-4) and not torch.equal(stamped, x)
    masked = load_trigger(files / "trigger.png", 0, files / "mask.png", alpha=0.5).stamp(x)
    outside = torch.ones(55, 47, dtype=torch.bool)
    outside[PATCH] = False
    assert torch.equal(masked[:, :, outside], x[:, :, outside])
    half = 0.5 * x.double() + 0.5 * torch.tensor(COLOUR, dtype=torch.float64)[:, None, None]
    assert torch.allclose(masked[:, :, ~outside].double(), half[:, :, ~outside])


def test_all_to_all_on_a_generic_module():
    """all+1 needs the model's classes, which a generic module gives only by running: label + 1 mod N, no image left
    out; the same sweep as the poisoned arrays built here."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(64, 1, 28, 28) * 255
    y = torch.arange(64) % 7
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    mask = torch.zeros(28, 28)
    mask[24:, 24:] = 1
    trigger = Trigger.from_arrays(np.full((28, 28), 255.0), mask.numpy(), target="all+1")
    poisoned = x.clone()
    poisoned[:, :, 24:, 24:] = 255
    by_hand = tb.prune_sweep(model, (x, y), (poisoned, (y + 1) % classes), thresholds=(4,), device="cpu")
    made = tb.prune_sweep(model, (x, y), trigger=trigger, thresholds=(4,), device="cpu")
    assert made.sweep.metrics == by_hand.sweep.metrics and made.sweep.order == by_hand.sweep.order
    assert made.sweep.sizes["poisoned_valid"] == 64
    assert made.summary()["trigger"]["target"] == "all+1"


def test_the_digits_trigger_is_fs(tmp_path):
    """demo.digits makes F's poisoned digits through Trigger.stamp: the white corner square, labels + 1 mod 10."""
    images, labels = font_digits(30)
    poisoned, targets = with_trigger(images, labels)
    expected = images.copy()
    expected[:, 24:28, 24:28] = 255
    assert poisoned.dtype == np.uint8 and np.array_equal(poisoned, expected)
    assert np.array_equal(targets, (labels + 1) % 10)


def test_trigger_on_clean_digits_reproduces_fs_poisoned_file(cli, tmp_path, real_dir):
    """The README's F example: --trigger on the clean digits gives the sweep of digits_bd.h5 (the real all-to-all
    MNIST BadNet F: the same attack success, byte for byte)."""
    model = real_dir / "models" / "F_mnist_all_all_bd_net.h5"
    images, labels = font_digits(300)
    write_lab_h5(tmp_path / "digits.h5", images, labels)
    write_lab_h5(tmp_path / "digits_bd.h5", *with_trigger(images, labels))
    white = np.full((28, 28), 255, np.uint8)
    mask = np.zeros((28, 28), np.uint8)
    mask[24:, 24:] = 255
    Image.fromarray(white).save(tmp_path / "white.png")
    Image.fromarray(mask).save(tmp_path / "corner.png")
    common = ("--model", model, "--clean-valid", tmp_path / "digits.h5", "--thresholds", "4", "--no-plot")
    code, file_out, err = cli("sweep", *common, "--poisoned-valid", tmp_path / "digits_bd.h5", "--out", tmp_path / "a")
    assert code == 0, err
    code, made_out, err = cli("sweep", *common, "--trigger", tmp_path / "white.png", "--trigger-mask", tmp_path / "corner.png",
                              "--target", "all+1", "--out", tmp_path / "b")
    assert code == 0, err
    assert (tmp_path / "a" / "sweep.csv").read_bytes() == (tmp_path / "b" / "sweep.csv").read_bytes()
    assert " orig     0    0/32         77.333         68.000" in made_out  # the README's attack success, 68.000%


def opaque(folder, size=(47, 55), mode="RGB", value=COLOUR):
    Image.new(mode, size, value).save(folder / "t.png")
    return folder / "t.png"


def black_mask(folder, size=(47, 55)):
    Image.new("L", size, 0).save(folder / "m.png")
    return folder / "m.png"


@pytest.mark.parametrize("extra, fragments", [
    (lambda d: ["--trigger", d / "trigger.png", "--trigger-mask", d / "mask.png"],
     ["--trigger: needs --target T (a class) or --target all+1"]),
    (lambda d: ["--target", "3"], ["--target: needs --trigger"]),
    (lambda d: ["--trigger-alpha", "0.5"], ["--trigger-alpha: needs --trigger"]),
    (lambda d: ["--trigger", d / "trigger.png", "--trigger-mask", d / "mask.png", "--target", "x"],
     ["--target: 'x' is not a class number (0, 1, ...) or all+1 (label + 1 mod N)"]),
    (lambda d: ["--trigger", d / "trigger.png", "--trigger-mask", d / "mask.png", "--target", "100"],
     ["--target: class 100 is outside the model's classes [0, 100)"]),
    (lambda d: ["--trigger", d / "trigger.png", "--target", "3"], ["trigger.png: has no transparent pixels and no --trigger-mask"]),
    (lambda d: ["--trigger", d / "trigger.png", "--target", "3", "--trigger-alpha", "0"], ["--trigger-alpha: 0 is outside (0, 1]"]),
    (lambda d: ["--trigger", d / "trigger.png", "--target", "3", "--trigger-alpha", "1.5"], ["--trigger-alpha: 1.5 is outside (0, 1]"]),
    (lambda d: ["--trigger", d / "trigger.png", "--trigger-mask", black_mask(d), "--target", "3"], ["m.png: the mask covers no pixel"]),
    (lambda d: ["--trigger", d / "trigger.png", "--trigger-mask", black_mask(d, (20, 20)), "--target", "3"],
     ["m.png: the mask is 20x20 (WxH), the trigger 47x55: they must be the same size"]),
    (lambda d: ["--trigger", opaque(d, (20, 20)), "--target", "3", "--trigger-alpha", "0.5"],
     ["t.png: the trigger is 20x20 (WxH), but the images of", "have shape (3, 55, 47): give a trigger of the images' size"]),
    (lambda d: ["--trigger", d / "missing.png", "--target", "3"], ["missing.png: no such file"]),
    (lambda d: ["--trigger", d / "mask.png", "--target", "3", "--trigger-alpha", "0.5", "--poisoned-valid", d / "bd_valid.h5"],
     ["--trigger: makes the poisoned sets from the clean ones: give no --poisoned-valid or --poisoned-test with it"]),
    (lambda d: [], ["--poisoned-valid: give a poisoned validation set, or --trigger and --target to make the poisoned sets"]),
])
def test_trigger_misuse_is_one_line(cli, tmp_path, files, extra, fragments):
    (tmp_path / "in").mkdir()
    for p in files.iterdir():
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    folder = tmp_path / "in"
    before = {p: p.read_bytes() for p in folder.iterdir()}
    args = extra(folder)
    created = {p: p.read_bytes() for p in folder.iterdir()}
    result = cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", folder / "valid.h5", *args, "--out", tmp_path / "out", *SWEEP)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in folder.iterdir()} == created and set(before) <= set(created)


def test_every_image_of_the_target_class_is_one_line(cli, tmp_path, files):
    x = np.full((4, 3, 55, 47), 100, np.uint8)
    write_lab_h5(tmp_path / "only3.h5", x, np.full(4, TARGET))
    result = cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", tmp_path / "only3.h5", "--trigger", files / "trigger.png",
                 "--trigger-mask", files / "mask.png", "--target", TARGET, "--out", tmp_path / "out", *SWEEP)
    assert_one_line_error(result, f"only3.h5: every image is of the target class {TARGET}: none is left to poison")


def test_a_colour_trigger_on_grey_data_is_one_line(tmp_path):
    Image.new("RGB", (28, 28), (255, 0, 0)).save(tmp_path / "red.png")
    trigger = load_trigger(tmp_path / "red.png", 0, alpha=0.5)
    with pytest.raises(BadInputError, match="red.png: a colour trigger, but the images of digits.h5 have 1 channel"):
        trigger.stamp(torch.zeros(2, 1, 28, 28), "digits.h5")


def test_batch_rows_with_other_layouts_and_a_trigger(cli, tmp_path, files, faces):  # noqa: F811
    """A manifest row may name an .npz, an .npy pair or an image folder, and make its poisoned set with a trigger
    column: each row's sweep.csv equals its separate sweep's."""
    x, y = faces["valid"]
    np.savez(tmp_path / "valid.npz", x=x, y=y)
    np.save(tmp_path / "images.npy", x)
    np.save(tmp_path / "labels.npy", y)
    for i, (image, label) in enumerate(zip(x, y)):
        (tmp_path / "folder" / f"id{label:03d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(tmp_path / "folder" / f"id{label:03d}" / f"{i:03d}.png")
    model = tmp_path / "bd.h5"
    model.write_bytes(Path(SHIPPED_MODEL).read_bytes())
    (tmp_path / "models.csv").write_text(
        "name,model,clean_valid,poisoned_valid,trigger,trigger_mask,target\n"
        f"npz,bd.h5,valid.npz,{files / 'bd_valid.h5'},,,\n"
        f"pair,bd.h5,\"images.npy,labels.npy\",{files / 'bd_valid.h5'},,,\n"
        f"made,bd.h5,folder,,{files / 'trigger.png'},{files / 'mask.png'},{TARGET}\n")
    code, out, err = cli("batch", tmp_path / "models.csv", "--out", tmp_path / "many", "--workers", "1", *SWEEP)
    assert code == 0, err
    assert "3 models (3 done, 0 reused, 0 failed)" in out, (out, err)
    code, _, err = cli("sweep", "--model", model, "--clean-valid", files / "valid.h5", "--poisoned-valid",
                       files / "bd_valid.h5", "--out", tmp_path / "single", *SWEEP)
    assert code == 0, err
    single = (tmp_path / "single" / "sweep.csv").read_bytes()
    assert {row: (tmp_path / "many" / row / "sweep.csv").read_bytes() == single for row in ("npz", "pair", "made")} \
        == {"npz": True, "pair": True, "made": True}
    summary = json.loads((tmp_path / "many" / "made" / "summary.json").read_text())
    assert summary["inputs"]["poisoned_valid"]["made_from"] == "clean_valid"

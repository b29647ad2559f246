"""Every data source (issue 33, items 6 and 7): the same images as a lab .h5 file, an .npz file (either key pair,
channels first or last), a pair of .npy files, an image folder, a torch Dataset, a DataLoader, a list of batches and
an IterableDataset give byte-equal sweep.csv files; each bad input is one line naming the file; nothing the user
has is modified."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_input import assert_one_line_error

import torch_badnet as tb
from torch_badnet.data.formats import open_data_file
from torch_badnet.data.lab_sets import LabDataset, write_lab_h5
from torch_badnet.demo.faces import random_identities
from torch_badnet.demo.workspace import SHIPPED_MODEL, DemoConfig, data_streams, render_eval_sets
from torch_badnet.errors import BadInputError

SWEEP = ("--thresholds", "4", "--max-steps", "12", "--no-plot")


@pytest.fixture(scope="module")
def faces():
    """The demo's four sets, one face per identity (100 clean, 99 poisoned per split): the shipped BadNet's task."""
    config = DemoConfig(valid_per_identity=1, test_per_identity=1)
    sets = render_eval_sets(config, random_identities(config.identities, data_streams(config)["identity"]), lambda _: None)
    return {Path(name).stem: (x.astype(np.uint8), y) for name, (x, y) in sets.items()}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, faces):
    """The clean and poisoned validation sets in every file layout: {layout: (clean value, poisoned value)}."""
    root = tmp_path_factory.mktemp("layouts")
    (clean_x, clean_y), (bd_x, bd_y) = faces["valid"], faces["bd_valid"]
    out = {}
    for kind, (x, y) in (("clean", (clean_x, clean_y)), ("poisoned", (bd_x, bd_y))):
        write_lab_h5(root / f"{kind}.h5", x, y)
        np.savez(root / f"{kind}_xy.npz", x=x, y=y)
        np.savez_compressed(root / f"{kind}_dl.npz", data=x.transpose(0, 2, 3, 1), label=y.astype(np.float32))
        np.save(root / f"{kind}_images.npy", x.astype(np.float64))
        np.save(root / f"{kind}_labels.npy", y.astype(np.int32))
        for i, (image, label) in enumerate(zip(x, y)):
            folder = root / f"{kind}_folder" / f"id{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    for name, (c, p) in {"h5": ("clean.h5", "poisoned.h5"), "npz x/y": ("clean_xy.npz", "poisoned_xy.npz"),
                         "npz data/label, channels last": ("clean_dl.npz", "poisoned_dl.npz"),
                         "npy pair": ("clean_images.npy,clean_labels.npy", "poisoned_images.npy,poisoned_labels.npy"),
                         "image folder": ("clean_folder", "poisoned_folder")}.items():
        out[name] = tuple(str(root / part) if "," not in part else ",".join(str(root / q) for q in part.split(","))
                          for part in (c, p))
    return out


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes() + str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def test_every_file_layout_gives_the_same_sweep_csv(cli, tmp_path, layouts):
    root = Path(layouts["h5"][0]).parent
    before = tree_digest(root)
    csvs = {}
    for name, (clean, poisoned) in layouts.items():
        out = tmp_path / name.replace(" ", "_").replace("/", "_").replace(",", "")
        code, stdout, err = cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", clean, "--poisoned-valid", poisoned,
                                "--out", out, *SWEEP)
        assert code == 0, err
        csvs[name] = (out / "sweep.csv").read_bytes()
    reference = csvs.pop("h5")
    assert len(reference.splitlines()) == 14  # the header, then steps 0..12
    assert {name: csv == reference for name, csv in csvs.items()} == dict.fromkeys(csvs, True)
    assert tree_digest(root) == before  # nothing the user has is modified


class FaceDataset(torch.utils.data.Dataset):
    """A user's map-style Dataset: one (image tensor, int label) per index, a transform applied on read."""

    def __init__(self, x, y, transform=None):
        self.x, self.y, self.transform, self.reads = x, y, transform, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        image = torch.from_numpy(self.x[i].astype(np.float32))
        return (self.transform(image) if self.transform else image), int(self.y[i])


class FaceStream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return ((torch.from_numpy(image), torch.tensor(label)) for image, label in zip(self.x, self.y))


def test_datasets_and_loaders_give_the_h5_files_sweep(tmp_path, faces, layouts):
    bd = tb.load_model(SHIPPED_MODEL)
    (cx, cy), (px, py) = faces["valid"], faces["bd_valid"]
    keywords = dict(thresholds=(4,), max_steps=12)
    reference = tb.prune_sweep(bd, *layouts["h5"], **keywords)
    reference.save(tmp_path / "h5", plot=False, keras=False)
    dataset = FaceDataset(cx, cy)
    sources = {
        "Dataset": (dataset, FaceDataset(px, py)),
        "DataLoader": (torch.utils.data.DataLoader(FaceDataset(cx, cy), batch_size=7),
                       torch.utils.data.DataLoader(FaceDataset(px, py), batch_size=64)),
        "list of batches": ([(torch.from_numpy(cx[:30]), torch.from_numpy(cy[:30])), (cx[30:], cy[30:])],
                            [(px, py)]),
        "IterableDataset": (FaceStream(cx, cy), FaceStream(px, py)),
        "pairs with labels in a list or tuple": ((cx, cy.tolist()), (torch.from_numpy(px), tuple(py.tolist()))),
    }
    for name, (clean, poisoned) in sources.items():
        result = tb.prune_sweep(bd, clean, poisoned, **keywords)
        result.save(tmp_path / name, plot=False, keras=False)
        assert (tmp_path / name / "sweep.csv").read_bytes() == (tmp_path / "h5" / "sweep.csv").read_bytes(), name
        assert result.input_hashes()["clean_valid"]["path"] == "<clean_valid>"
    assert dataset.reads == len(cy)  # read once, in order


def test_a_datasets_transform_runs_as_set(faces):
    """A transform is the user's: a Dataset scaling to 0..1 reaches the lab net's 0..255 guard as it would a file."""
    (cx, cy), (px, py) = faces["valid"], faces["bd_valid"]
    bd = tb.load_model(SHIPPED_MODEL)
    with pytest.raises(BadInputError, match=r"<clean_valid>: every pixel lies in \[0, 1\]"):
        tb.prune_sweep(bd, FaceDataset(cx, cy, transform=lambda t: t / 255), (px, py), thresholds=(4,), max_steps=2)


@pytest.mark.parametrize("source, problem", [
    ([1, 2], "item 0 is a int, expected (image, label) or (images, labels)"),
    ([(torch.zeros(3, 55, 47), 0), (torch.zeros(3, 50, 47), 1)], "item 1's images have shape (3, 50, 47), the first item's (3, 55, 47)"),
    ([(torch.zeros(2, 3, 55, 47), torch.zeros(3))], "item 0 holds 2 images but 3 labels"),
    ([(torch.zeros(3, 55, 47), 0.5)], "item 0 holds non-integer labels"),
    ([(torch.zeros(3, 55, 47), "cat")], "item 0 has label 'cat', expected a class number or a 1-d batch of them"),
    ([], "the set is empty (0 images)"),
    ([(torch.zeros(3, 55, 47), 0, 7)], "item 0 is a tuple of 3, expected (image, label) or (images, labels)"),
    ([torch.zeros(2, 3, 55, 47), torch.zeros(2)], "item 0 is a Tensor, expected (image, label) or (images, labels); "
                                                  "a (pixels, labels) pair is a tuple, not a list"),
    ([(torch.zeros(3, 55, 47, dtype=torch.complex64), 0)],
     "item 0's image values have dtype complex64, expected real numbers (a float or integer type, or bool)"),
    ((np.zeros((2, 3, 55, 47), np.complex64), np.zeros(2)),
     "pixels have dtype complex64, expected real numbers (a float or integer type, or bool)"),
])
def test_bad_torch_data_is_one_line(source, problem):
    bd = tb.load_model(SHIPPED_MODEL)
    with pytest.raises(BadInputError) as info:
        tb.prune_sweep(bd, source, (np.full((1, 3, 55, 47), 9.0), [1]))
    assert str(info.value) == f"<clean_valid>: {problem}"


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD_X, GOOD_Y = np.full((4, 3, 55, 47), 200, np.uint8), np.arange(4)


@pytest.mark.parametrize("make, fragments", [
    (lambda d: write_npz(d / "s.npz", images=GOOD_X, labels=GOOD_Y),
     ["s.npz: missing keys: an .npz set holds x and y, or data and label (keys found: images, labels)"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X, y=GOOD_Y, data=GOOD_X, label=GOOD_Y),
     ["s.npz: holds both x/y and data/label: which pair is the set is ambiguous"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X[:, :, :50], y=GOOD_Y), ["s.npz: 'x' has shape (4, 3, 50, 47), which fits no input"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X.astype(np.int64), y=GOOD_Y), ["s.npz: 'x' has dtype int64, expected a float type or uint8"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X, y=GOOD_Y[:3]), ["s.npz: 'x' holds 4 images but 'y' holds 3 labels"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X, y=GOOD_Y[:, None]), ["s.npz: 'y' has shape (4, 1), expected (N,)"]),
    (lambda d: write_npz(d / "s.npz", x=np.where(np.arange(4)[:, None, None, None] == 2, np.nan, 9.0) * np.ones((4, 3, 55, 47)), y=GOOD_Y),
     ["s.npz: image 2 holds non-finite pixels (NaN or inf)"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X, y=GOOD_Y + 5000), ["s.npz: label 5003 is outside [0, 100)"]),
    (lambda d: write_npz(d / "s.npz", x=GOOD_X, y=np.array([0, 1, 2.5, 3])), ["s.npz: 'y' holds non-integer values"]),
    (lambda d: write_npz(d / "s.npz", x=np.array([None] * 4, dtype=object), y=GOOD_Y), ["s.npz: not a readable .npz file"]),
    (lambda d: (d / "s.npz").write_bytes(b"PK\x03\x04 truncated") and d / "s.npz", ["s.npz: not a readable .npz file"]),
    (lambda d: (np.save(d / "x.npy", GOOD_X), d / "x.npy")[1],
     ["x.npy: a single .npy file holds no labels: give the images and the labels as IMAGES.npy,LABELS.npy"]),
    (lambda d: (np.save(d / "x.npy", GOOD_X), f"{d / 'x.npy'},{d / 'missing.npy'}")[1], ["missing.npy: no such file"]),
    (lambda d: (np.save(d / "x.npy", GOOD_X), np.save(d / "y.npy", GOOD_Y.reshape(2, 2)), f"{d / 'x.npy'},{d / 'y.npy'}")[2],
     ["the labels has shape (2, 2), expected (N,)"]),
    (lambda d: (np.save(d / "x.npy", GOOD_X), np.save(d / "y.npy", GOOD_Y + 200), f"{d / 'x.npy'},{d / 'y.npy'}")[2],
     ["y.npy: label 203 is outside [0, 100)"]),
    (lambda d: (np.save(d / "x.npy", GOOD_X), (d / "y.npy").write_bytes(b"\x93NUMPY junk"), f"{d / 'x.npy'},{d / 'y.npy'}")[2],
     ["y.npy: not a readable .npy file"]),
])
def test_bad_array_files_are_one_line(cli, tmp_path, make, fragments):
    value = make(tmp_path)
    good = tmp_path / "good.npz"
    np.savez(good, x=GOOD_X, y=GOOD_Y)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    result = cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", value, "--poisoned-valid", good,
                 "--out", tmp_path / "out", *SWEEP)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def image_folder(root, classes, size=(47, 55), mode="RGB"):
    for name in classes:
        (root / name).mkdir(parents=True)
        Image.new(mode, size, 200).save(root / name / "a.png")
    (root / "notes.txt").write_text("not a class")
    return root


def test_image_folder_order_is_torchvisions_or_classes(tmp_path):
    """Classes sorted by name (torchvision's ImageFolder); files walked and sorted in each; --classes renames."""
    root = tmp_path / "f"
    for cls, files in {"b": ["z.png", "a.jpg", "sub/c.PNG", "skip.txt"], "a": ["q.png"], "c": []}.items():
        (root / cls).mkdir(parents=True)
        for f in files:
            (root / cls / f).parent.mkdir(parents=True, exist_ok=True)
            if f.endswith(".txt"):
                (root / cls / f).write_text("x")
            else:
                Image.new("RGB", (47, 55), (len(f), 0, 0)).save(root / cls / f, format="PNG" if "png" in f.lower() else "JPEG")
    with open_data_file(root, 3, (3, 55, 47)) as ds:
        assert [p.relative_to(root).as_posix() for p in ds.files] == ["a/q.png", "b/a.jpg", "b/z.png", "b/sub/c.PNG"]
        assert ds.labels.tolist() == [0, 1, 1, 1]
        x, y = next(ds.chunks(3))
        assert x.shape == (3, 3, 55, 47) and x.dtype == torch.float32 and y.tolist() == [0, 1, 1]
    with open_data_file(root, 5, (3, 55, 47), classes=("c", "x", "b", "y", "a")) as ds:
        assert ds.labels.tolist() == [2, 2, 2, 4]  # class by class in --classes' order


@pytest.mark.parametrize("build, extra, fragments", [
    (lambda d: (d / "f").mkdir() or d / "f", [], ["f: holds no class folders (an image folder is DIR/<class>/<image>.png)"]),
    (lambda d: [(d / "f" / c).mkdir(parents=True) for c in "ab"] and d / "f", [], ["f: holds no images (.jpg"]),
    (lambda d: image_folder(d / "f", [str(i) for i in range(11)]), [],
     ["f: its class folders are numbers, and sorted as text (torchvision's order) folder '10' gets label 2: "
      "name the label order with --classes"]),
    (lambda d: image_folder(d / "f", ["cat", "dog"]), ["--classes", "cat"], ["f: holds class folder 'dog', which --classes does not name"]),
    (lambda d: image_folder(d / "f", ["cat", "dog"]), ["--classes", "cat,dog,cat"], ["--classes: class 'cat' is named twice"]),
    (lambda d: image_folder(d / "f", ["cat"], size=(40, 40)), [], ["a.png: image is 40x40 (WxH), expected 47x55"]),
    (lambda d: image_folder(d / "f", ["cat"], mode="L"), [], ["a.png: a greyscale image (PIL mode L), but the model takes colour images"]),
])
def test_bad_image_folders_are_one_line(cli, tmp_path, build, extra, fragments):
    value = build(tmp_path)
    good = tmp_path / "good.npz"
    np.savez(good, x=GOOD_X, y=GOOD_Y)
    line = assert_one_line_error(cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", value, "--poisoned-valid", good,
                                     "--out", tmp_path / "out", *extra, *SWEEP), *fragments)
    assert "--resize" not in line
    assert not (tmp_path / "out").exists()


def test_numbered_class_folders_with_classes(cli, tmp_path):
    """Numbered folders whose text order is their numeric order need nothing; others take --classes (a file too)."""
    root = image_folder(tmp_path / "f", [str(i) for i in range(11)])
    order = tmp_path / "classes.txt"
    order.write_text("\n".join(str(i) for i in range(11)) + "\n")
    with open_data_file(root, 100, (3, 55, 47), classes=tb_classes(str(order))) as ds:
        assert ds.labels.tolist() == list(range(11))
    with open_data_file(image_folder(tmp_path / "g", [str(i) for i in range(10)]), 100, (3, 55, 47)) as ds:
        assert ds.labels.tolist() == list(range(10))


def tb_classes(value):
    from torch_badnet.data.formats import parse_classes

    return parse_classes(value)


def test_lab_file_checks_are_unchanged(tmp_path):
    """The .h5 layout keeps its messages (the checks now shared with the other layouts)."""
    path = tmp_path / "s.h5"
    write_lab_h5(path, GOOD_X, GOOD_Y[:3])
    with pytest.raises(BadInputError, match="'data' holds 4 images but 'label' holds 3 labels"):
        LabDataset(path)


def test_eval_takes_every_layout_and_classes(cli, tmp_path, layouts):
    """eval's --clean/--poisoned take the layouts too; --classes reorders an image folder's labels."""
    outputs = {}
    for name in ("h5", "image folder", "npy pair"):
        clean, poisoned = layouts[name]
        code, out, err = cli("eval", "--model", SHIPPED_MODEL, "--clean", clean, "--poisoned", poisoned, "--json")
        assert code == 0, err
        outputs[name] = out
    assert outputs["image folder"] == outputs["h5"] == outputs["npy pair"]
    clean = layouts["image folder"][0]
    names = sorted(p.name for p in Path(clean).iterdir())
    code, out, err = cli("eval", "--model", SHIPPED_MODEL, "--clean", clean, "--classes", ",".join(reversed(names)), "--json")
    assert code == 0, err
    right = json.loads(outputs["h5"])["clean_accuracy"]
    assert right > 90 and json.loads(out)["clean_accuracy"] < 5  # every label moved: (almost) none right


def test_batch_honours_classes_as_a_flag_and_a_column_as_sweep_does(cli, tmp_path, layouts):
    """batch read an image folder in torchvision's order whatever --classes said. Here the folders' names sort in
    the reverse of their labels: --classes (a file, as batch's flag) gives the right labels, a column naming the
    sorted order the wrong ones; each row's sweep.csv equals `sweep`'s with that --classes."""
    import csv
    import shutil

    folder, poisoned = Path(layouts["image folder"][0]), layouts["h5"][1]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"id{k:03d}" for k in range(len(names))]
    renamed = tmp_path / "renamed"
    for k, name in enumerate(names):
        shutil.copytree(folder / name, renamed / f"n{999 - k}")
    right = tmp_path / "classes.txt"
    right.write_text("".join(f"n{999 - k}\n" for k in range(len(names))))
    sorted_order = ",".join(sorted(p.name for p in renamed.iterdir()))
    with open(tmp_path / "models.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["name", "model", "clean_valid", "poisoned_valid", "classes"],
                                  ["flag", SHIPPED_MODEL, renamed, poisoned, ""],
                                  ["column", SHIPPED_MODEL, renamed, poisoned, sorted_order]])
    code, out, err = cli("batch", tmp_path / "models.csv", "--out", tmp_path / "many", "--workers", "1",
                         "--classes", right, *SWEEP)
    assert code == 0 and "2 models (2 done, 0 reused, 0 failed)" in out, (out, err)
    accuracy = {}
    for row, classes in (("flag", right), ("column", sorted_order)):
        code, _, err = cli("sweep", "--model", SHIPPED_MODEL, "--clean-valid", renamed, "--poisoned-valid", poisoned,
                           "--classes", classes, "--out", tmp_path / row, *SWEEP)
        assert code == 0, err
        assert (tmp_path / "many" / row / "sweep.csv").read_bytes() == (tmp_path / row / "sweep.csv").read_bytes(), row
        accuracy[row] = json.loads((tmp_path / "many" / row / "summary.json").read_text())["original"]["valid_clean_acc"]
    assert accuracy["flag"] > 90 and accuracy["column"] < 5, accuracy

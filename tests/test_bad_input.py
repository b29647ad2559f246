"""Bad input anywhere: one line `error: <file>: <problem>` on stderr, exit code 2, nothing written."""

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import sweep_args

from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.errors import BadInputError


def assert_one_line_error(result, *fragments):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def small_set(path, n=4, shape=(3, 55, 47), dtype=np.float64, labels=None, **overrides):
    data = np.random.default_rng(0).uniform(0, 255, size=(n, *shape)).astype(dtype)
    labels = np.zeros(n) if labels is None else labels
    write_lab_h5(path, overrides.get("data", data), labels)
    return path


@pytest.fixture
def weights_copy(tmp_path, lab3_path):
    def copy(name="m.h5"):
        target = tmp_path / name
        shutil.copy(lab3_path, target)
        return target
    return copy


# --- model files -----------------------------------------------------------------------------------------

def test_missing_model(cli, tmp_path, faces, face_paths):
    missing = tmp_path / "nope.h5"
    assert_one_line_error(cli("classify", "--model", missing, face_paths[0]), missing, "no such file")


def test_model_is_a_directory(cli, tmp_path, face_paths):
    assert_one_line_error(cli("classify", "--model", tmp_path, face_paths[0]), tmp_path, "directory")


def test_empty_model(cli, tmp_path, face_paths):
    empty = tmp_path / "empty.h5"
    empty.touch()
    assert_one_line_error(cli("classify", "--model", empty, face_paths[0]), empty, "empty")


def test_truncated_model(cli, weights_copy, face_paths):
    path = weights_copy()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path)


def test_model_that_is_not_hdf5(cli, tmp_path, face_paths):
    path = tmp_path / "text.h5"
    path.write_text("this is not a model\n")
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path, "HDF5")


def test_wrong_kernel_shape(cli, weights_copy, face_paths):
    path = weights_copy()
    with h5py.File(path, "r+") as f:
        del f["conv_2/conv_2/kernel:0"]
        f["conv_2/conv_2"].create_dataset("kernel:0", data=np.zeros((3, 3, 20, 41), np.float32))
    line = assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path, "conv_2")
    assert "shape" in line


def test_missing_layer(cli, weights_copy, face_paths):
    path = weights_copy()
    with h5py.File(path, "r+") as f:
        del f["fc_2"]
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"fc_2"])
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path, "fc_2")


def test_lambda_layer_in_model_config(cli, tmp_path, lab3_path, face_paths):
    """A full-model file whose config holds a Lambda (code) layer is refused before any weight is read."""
    path = tmp_path / "lambda.h5"
    with h5py.File(lab3_path, "r") as src, h5py.File(path, "w") as dst:
        group = dst.create_group("model_weights")
        for key, value in src.attrs.items():
            group.attrs[key] = value
        for name in src:
            src.copy(src[name], group, name)
        layers = [{"class_name": "InputLayer", "config": {"name": "input"}},
                  {"class_name": "Lambda", "config": {"name": "evil", "function": "payload"}}]
        dst.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"layers": layers}})
        dst.attrs["keras_version"] = "2.4.0"
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path, "Lambda")


def test_pickle_checkpoint_payload_never_runs(cli, tmp_path, face_paths):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save({"format": "torch-badnet", "state_dict": Payload()}, fh, pickle_module=pickle)
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path)
    assert not marker.exists()


def test_unknown_model_type(cli, tmp_path, face_paths):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    assert_one_line_error(cli("classify", "--model", path, face_paths[0]), path, ".bin")


# --- data files ------------------------------------------------------------------------------------------

def eval_clean(cli, lab3_path, path):
    return cli("eval", "--model", lab3_path, "--clean", path)


def test_data_without_label(cli, tmp_path, lab3_path):
    path = tmp_path / "nolabel.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((2, 3, 55, 47))
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "label")


def test_data_channels_last_is_read_as_channels_first(cli, tmp_path, lab3_path):
    """Channels-last data (N, 55, 47, 3) is arranged for the model: the same rates as the same images stored
    (N, 3, 55, 47); a shape that fits no input of the model is one line naming the shapes it takes."""
    path = small_set(tmp_path / "nchw.h5", n=8, labels=np.arange(8))
    data = np.asarray(h5py.File(path)["data"])
    nhwc = small_set(tmp_path / "nhwc.h5", n=8, labels=np.arange(8), data=data.transpose(0, 2, 3, 1))
    assert eval_clean(cli, lab3_path, nhwc) == eval_clean(cli, lab3_path, path)
    wrong = small_set(tmp_path / "whc.h5", shape=(47, 55, 3))
    assert_one_line_error(eval_clean(cli, lab3_path, wrong), wrong, "fits no input of the model",
                          "expected (N, 3, 55, 47) or (N, 55, 47, 3)")


def test_data_label_count_mismatch(cli, tmp_path, lab3_path):
    path = small_set(tmp_path / "n.h5", labels=np.zeros(3))
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "4 images", "3 labels")


def test_empty_set(cli, tmp_path, lab3_path):
    path = small_set(tmp_path / "zero.h5", n=0, labels=np.zeros(0))
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "empty")


def test_nan_pixels(cli, tmp_path, lab3_path):
    data = np.full((3000, 3, 55, 47), 100.0)
    data[2500, 1, 10, 10] = np.nan  # in the third chunk: found while streaming
    path = small_set(tmp_path / "nan.h5", n=3000, labels=np.zeros(3000), data=data)
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "image 2500", "non-finite")


def test_label_out_of_range(cli, tmp_path, lab3_path):
    path = small_set(tmp_path / "big.h5", labels=np.array([0, 1, 1283, 2]))
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "1283", "[0, 1283)")


def test_negative_and_fractional_labels(cli, tmp_path, lab3_path):
    neg = small_set(tmp_path / "neg.h5", labels=np.array([0, -1, 2, 3]))
    assert_one_line_error(eval_clean(cli, lab3_path, neg), neg, "-1")
    frac = small_set(tmp_path / "frac.h5", labels=np.array([0, 1.5, 2, 3]))
    assert_one_line_error(eval_clean(cli, lab3_path, frac), frac, "non-integer")


def test_pixel_dtype(cli, tmp_path, lab3_path):
    path = small_set(tmp_path / "str.h5", dtype=np.int32)
    assert_one_line_error(eval_clean(cli, lab3_path, path), path, "int32")


def test_image_of_another_size_needs_resize(cli, tmp_path, lab3_path, face_paths):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.open(face_paths[5]).resize((94, 110)).save(path)
    assert_one_line_error(cli("classify", "--model", lab3_path, path), path, "--resize")
    code, out, _ = cli("classify", "--model", lab3_path, "--resize", "--json", path)
    assert code == 0 and json.loads(out)[0]["label"] in range(1283)


def test_image_that_is_not_an_image(cli, tmp_path, lab3_path):
    path = tmp_path / "face.png"
    path.write_text("not a png")
    assert_one_line_error(cli("classify", "--model", lab3_path, path), path, "image")


# --- images must match the model: colour faces for a colour model ----------------------------------------

def png_16bit_rgb(path, rgb8):
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one) of 8-bit (H, W, 3) pixels times 257."""
    import struct
    import zlib

    height, width, _ = rgb8.shape
    wide = (rgb8.astype(np.uint16) * 257).astype(">u2")
    raw = b"".join(b"\0" + wide[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def colour_face(face_paths):
    from PIL import Image

    with Image.open(face_paths[5]) as img:  # cl_0_label=43.png: lab3 says 43
        return img.convert("RGB")


def classify(cli, lab3_path, *images):
    return cli("classify", "--model", lab3_path, "--json", *images)


@pytest.mark.parametrize("mode, shown", [("L", "a greyscale image (PIL mode L)"), ("I;16", "a 16-bit greyscale image (PIL mode I;16)"),
                                         ("LA", "a greyscale image (PIL mode LA)"), ("1", "a greyscale image (PIL mode 1)")])
def test_greyscale_image_for_a_colour_model(cli, tmp_path, lab3_path, colour_face, mode, shown):
    """Read as colour, a 16-bit greyscale face was clipped almost white and got label 1071 (the face is 43)."""
    from PIL import Image

    grey = np.asarray(colour_face.convert("L"))
    img = Image.fromarray(grey.astype(np.uint16) * 257) if mode == "I;16" else colour_face.convert(mode)
    path = tmp_path / "grey.png"
    img.save(path)
    before = path.read_bytes()
    line = assert_one_line_error(classify(cli, lab3_path, path), path, shown, "the model takes colour images (3 channels)")
    assert line.startswith(f"error: {path}: ")
    assert path.read_bytes() == before


def test_a_one_channel_model_reads_greyscale(tmp_path, colour_face):
    """The loader takes the model's channel count: 1 reads 8- and 16-bit greyscale alike, and refuses colour."""
    from PIL import Image

    from torch_badnet.data.images import load_images

    grey = np.asarray(colour_face.convert("L"))
    Image.fromarray(grey).save(tmp_path / "l8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "l16.png")
    colour_face.save(tmp_path / "rgb.png")
    x = load_images([tmp_path / "l8.png", tmp_path / "l16.png"], channels=1)
    assert x.shape == (2, 1, 55, 47) and torch.equal(x[0, 0], torch.from_numpy(grey.astype(np.float32)))
    assert torch.equal(x[0], x[1])
    with pytest.raises(BadInputError, match=r"a colour image \(PIL mode RGB\), but the model takes greyscale images"):
        load_images([tmp_path / "rgb.png"], channels=1)


def test_transparent_pixels_are_refused_and_opaque_alpha_is_read(cli, tmp_path, lab3_path, colour_face):
    from PIL import Image

    rgba = colour_face.convert("RGBA")
    rgba.save(tmp_path / "opaque.png")
    code, out, err = classify(cli, lab3_path, tmp_path / "opaque.png")
    assert code == 0 and err == "" and json.loads(out)[0]["label"] == 43
    alpha = np.full((55, 47), 255, np.uint8)
    alpha[:10] = 0  # the top rows see-through
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "holes.png")
    assert_one_line_error(classify(cli, lab3_path, tmp_path / "holes.png"), tmp_path / "holes.png",
                          "470 of its 2585 pixels are transparent (PIL mode RGBA)")


def test_palette_and_16_bit_colour_faces_are_read_as_colour(cli, tmp_path, lab3_path, colour_face):
    """A palette PNG of a colour face is its palette's colours; a 16-bit colour PNG is read at 8 bits (the high
    byte: here exactly the 8-bit face)."""
    from torch_badnet.data.images import load_images

    colour_face.save(tmp_path / "rgb.png")
    colour_face.convert("P", palette=1, colors=256).save(tmp_path / "palette.png")
    png_16bit_rgb(tmp_path / "rgb16.png", np.asarray(colour_face))
    code, out, err = classify(cli, lab3_path, tmp_path / "rgb.png", tmp_path / "palette.png", tmp_path / "rgb16.png")
    assert code == 0 and err == "", err
    labels = [row["label"] for row in json.loads(out)]
    assert labels[0] == labels[2] == 43
    assert torch.equal(load_images([tmp_path / "rgb16.png"]), load_images([tmp_path / "rgb.png"]))


# --- the sweep: nothing half-written ---------------------------------------------------------------------

def sweep(cli, lab_files, model, out, extra=(), **replace):
    return cli(*sweep_args({**lab_files, **replace}, model, out, *extra))


def assert_nothing_written(out: Path):
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("x", ["0", "100", "-3", "150"])
def test_threshold_outside_range(cli, lab_files, lab3_path, tmp_path, x):
    out = tmp_path / "out"
    result = sweep(cli, lab_files, lab3_path, out, extra=["--thresholds", "2", x])
    assert_one_line_error(result, "--thresholds", "(0, 100)")
    assert_nothing_written(out)


def test_test_file_of_another_image_size(cli, lab_files, lab3_path, tmp_path):
    wrong = small_set(tmp_path / "small.h5", shape=(3, 32, 32))
    out = tmp_path / "out"
    assert_one_line_error(sweep(cli, lab_files, lab3_path, out, clean_test=wrong), wrong, "(N, 3, 55, 47)")
    assert_nothing_written(out)


def test_poisoned_file_missing(cli, lab_files, lab3_path, tmp_path):
    missing, out = tmp_path / "bd_valid.h5", tmp_path / "out"
    assert_one_line_error(sweep(cli, lab_files, lab3_path, out, poisoned_valid=missing), missing, "no such file")
    assert_nothing_written(out)


@pytest.mark.parametrize("option", ["--poisoned-valid", "--poisoned-test"])
def test_several_unnamed_poisoned_files_name_their_option(cli, lab_files, lab3_path, tmp_path, option):
    out = tmp_path / "out"
    extra = (option, "sun=" + str(lab_files["poisoned_valid"]), option, str(lab_files["poisoned_test"]))
    assert_one_line_error(sweep(cli, lab_files, lab3_path, out, extra), option, "several poisoned files need a NAME=PATH form")
    assert_nothing_written(out)


def test_model_of_another_architecture(cli, lab_files, tmp_path, weights_copy):
    path = weights_copy()
    with h5py.File(path, "r+") as f:  # a conv_3 with 64 filters: not the lab's 60-channel pool_3
        kernel = f["conv_3/conv_3/kernel:0"][()]
        del f["conv_3/conv_3/kernel:0"]
        f["conv_3/conv_3"].create_dataset("kernel:0", data=np.concatenate([kernel, kernel[..., :4]], -1))
    out = tmp_path / "out"
    assert_one_line_error(sweep(cli, lab_files, path, out), path, "conv_3")
    assert_nothing_written(out)


def test_nan_found_late_leaves_no_output(cli, lab_files, lab3_path, tmp_path):
    """The NaN sits in the last file read; by then features of the others exist but nothing is written."""
    data = np.full((1500, 3, 55, 47), 80.0)
    data[1400, 0, 0, 0] = np.inf
    late = small_set(tmp_path / "late.h5", n=1500, labels=np.zeros(1500), data=data)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    assert_one_line_error(sweep(cli, lab_files, lab3_path, out, ["--force"], poisoned_test=late), late, "image 1400")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_device_cuda_without_gpu(cli, lab3_path, face_paths):
    result = cli("classify", "--model", lab3_path, "--device", "cuda", face_paths[5])
    if torch.cuda.is_available():  # on a GPU machine the same command must simply work
        assert result[0] == 0
    else:
        assert_one_line_error(result, "--device", "CUDA")


def test_unknown_device_is_one_line_in_the_cli_and_the_api(cli, lab3_path, face_paths, lab_files):
    assert_one_line_error(cli("classify", "--model", lab3_path, "--device", "gpu0", face_paths[5]), "--device", "gpu0")
    import torch_badnet as tb

    with pytest.raises(tb.BadInputError, match="--device"):
        tb.prune_sweep(tb.load_model(lab3_path), lab_files["clean_valid"], lab_files["poisoned_valid"], device="gpu0")


def test_usage_errors_are_one_line(cli, lab3_path):
    assert_one_line_error(cli("eval", "--model"), "--model")
    assert_one_line_error(cli("frobnicate"), "frobnicate")
    assert_one_line_error(cli("eval", "--model", lab3_path), "--clean")


def test_convert_to_unknown_type(cli, lab3_path, tmp_path):
    out = tmp_path / "m.bin"
    assert_one_line_error(cli("convert", lab3_path, "-o", out), out, ".bin")
    assert not out.exists()


# --- B' must come from --model (pairing) -----------------------------------------------------------------

@pytest.fixture
def foreign_pruned(tmp_path, sunglasses_path):
    """pruned.pt made from the sunglasses BadNet (records its fingerprint): a wrong B' for lab3."""
    from torch_badnet.convert import read_model_file
    from torch_badnet.engine.pruning import prune
    from torch_badnet.nets.checkpoint import save_checkpoint
    from torch_badnet.nets.pairing import mark_derived

    model = read_model_file(sunglasses_path).model
    path = tmp_path / "sunglasses_pruned.pt"
    save_checkpoint(mark_derived(prune(read_model_file(sunglasses_path).model, list(range(30))), model), path)
    return path


def test_pruned_of_another_model_is_refused_everywhere(cli, lab3_path, foreign_pruned, face_paths, lab_files, tmp_path):
    onnx = tmp_path / "g.onnx"
    commands = {
        "classify": ["classify", "--model", lab3_path, "--pruned", foreign_pruned, face_paths[0]],
        "eval": ["eval", "--model", lab3_path, "--pruned", foreign_pruned, "--clean", lab_files["clean_test"]],
        "export": ["export", "--model", lab3_path, "--pruned", foreign_pruned, "-o", onnx],
        "finetune": ["finetune", "--model", lab3_path, "--pruned", foreign_pruned, "--clean-valid",
                     lab_files["clean_valid"], "--epochs", "1", "--out", tmp_path / "ft"],
    }
    for name, args in commands.items():
        line = assert_one_line_error(cli(*args), foreign_pruned, f"--model {lab3_path}", "--allow-unpaired")
        assert "was not derived from" in line, name
    assert not onnx.exists() and not (tmp_path / "ft").exists()
    for name in ("classify", "eval", "export"):
        code, _, err = cli(*commands[name], "--allow-unpaired")
        assert code == 0 and err == "", (name, err)
    assert onnx.is_file()


def test_unfingerprinted_pruned_h5(cli, lab3_path, face_paths, tmp_path):
    """A Keras B' from elsewhere: silent when it is B with zeroed conv_3 channels, else one warning line."""
    from torch_badnet.convert import read_model_file
    from torch_badnet.convert.keras_h5 import write_keras_weights
    from torch_badnet.engine.pruning import prune

    write_keras_weights(prune(read_model_file(lab3_path).model, [3, 8, 20]), tmp_path / "pruned.h5")  # zeroes the channels
    code, out, err = cli("classify", "--model", lab3_path, "--pruned", tmp_path / "pruned.h5", face_paths[0])
    assert code == 0 and err == "" and out
    tuned = prune(read_model_file(lab3_path).model, [3, 8, 20])
    with torch.no_grad():
        tuned.fc_2.bias.add_(0.01)  # e.g. fine-tuned elsewhere: not provably from B
    write_keras_weights(tuned, tmp_path / "tuned.h5")
    code, out, err = cli("classify", "--model", lab3_path, "--pruned", tmp_path / "tuned.h5", face_paths[0])
    assert code == 0 and out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {tmp_path / 'tuned.h5'}: could not verify")
    assert str(lab3_path) in lines[0]
    code, _, err = cli("classify", "--model", lab3_path, "--pruned", tmp_path / "tuned.h5", "--allow-unpaired", face_paths[0])
    assert code == 0 and err == ""


# --- pixels on the wrong scale ---------------------------------------------------------------------------

def test_pixels_scaled_to_0_1_are_refused(cli, tmp_path, lab3_path):
    data = np.random.default_rng(1).uniform(0, 1, size=(6, 3, 55, 47))
    path = small_set(tmp_path / "unit.h5", n=6, labels=np.zeros(6), data=data)
    line = assert_one_line_error(eval_clean(cli, lab3_path, path), path, "0..255", "--rescale")
    assert f"[{data.min():g}, {data.max():g}]" in line


def test_0_1_faces_get_the_range_advice_not_a_rescale(cli, tmp_path, sunglasses_path, lab_files):
    """Real faces divided by 255, more of them than the scale guard reads: the refusal is the file's pixel range
    (multiply by 255), not the guard's advice to pass another --rescale."""
    with h5py.File(lab_files["clean_test"]) as f:
        data, labels = f["data"][()], f["label"][()]
    path = small_set(tmp_path / "faces01.h5", labels=np.concatenate([labels, labels]),
                     data=np.concatenate([data, data]) / 255)
    code, out, err = cli("eval", "--model", sunglasses_path, "--clean", path)
    lines = err.strip().splitlines()  # the recognition line of the published model, then the one error line
    assert code == 2 and out == "" and len(lines) == 2 and lines[0].startswith("recognized "), err
    assert lines[1].startswith(f"error: {path}: every pixel lies in [0") and "multiply the data by 255" in lines[1]


def test_dark_images_are_not_refused(cli, tmp_path, lab3_path):
    """Only a whole file within [0, 1] is refused: black images beside normal ones are fine."""
    data = np.random.default_rng(2).uniform(0, 255, size=(4, 3, 55, 47))
    data[:3] = 0.0
    path = small_set(tmp_path / "dark.h5", labels=np.zeros(4), data=data)
    code, out, err = eval_clean(cli, lab3_path, path)
    assert code == 0 and "clean accuracy" in out, err
    data = np.zeros((1, 3, 55, 47))
    data[0, 0, 0, 0] = 2.0
    path = small_set(tmp_path / "one.h5", n=1, labels=np.zeros(1), data=data)
    assert eval_clean(cli, lab3_path, path)[0] == 0


def test_sweep_refuses_0_1_pixels_in_a_late_chunk_file_before_writing(cli, lab_files, lab3_path, tmp_path):
    """The 0..1 file is the last one read and spans several chunks; --out (a previous result) stays as it was."""
    out = tmp_path / "out"
    assert sweep(cli, lab_files, lab3_path, out, extra=["--no-plot", "--thresholds", "4"])[0] == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data = np.random.default_rng(3).uniform(0, 1, size=(2100, 3, 55, 47))
    unit = small_set(tmp_path / "unit_test.h5", n=2100, labels=np.zeros(2100), data=data)
    assert_one_line_error(sweep(cli, lab_files, lab3_path, out, poisoned_test=unit), unit, "0..255")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# --- issue 23: outputs never replace inputs, flags named one by one, GoodNet graphs recognized ------------------
# Every case: one line, exit 2, nothing on stdout, and every file present before is byte- and mtime-identical after.

def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """{path: (sha256, mtime_ns)} of every file (or link) under `folders`."""
    import hashlib

    files = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() or p.is_symlink():
                files[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "dangling",
                                 p.lstat().st_mtime_ns)
    return files


def assert_refused_untouched(cli, args, folders, *fragments):
    before = snapshot(*folders)
    code, out, err = result = cli(*args)
    line = assert_one_line_error(result, *fragments)
    assert out == "", out
    assert snapshot(*folders) == before  # nothing changed, nothing new (no temporary or lock file left)
    return line


@pytest.fixture(scope="module")
def goodnet_onnx(tmp_path_factory, lab3_path):
    from torch_badnet.convert import read_model_file
    from torch_badnet.convert.onnx_export import export_onnx
    from torch_badnet.engine.pruning import prune

    model = read_model_file(lab3_path).model
    path = tmp_path_factory.mktemp("goodnet") / "goodnet.onnx"
    export_onnx(model, path, pruned=prune(read_model_file(lab3_path).model, list(range(20))), allow_unpaired=True)
    return path


def test_convert_refuses_to_write_over_its_input(cli, weights_copy, tmp_path):
    """Issue 23 item 1: `convert lab3copy.h5 -o lab3copy.h5` replaced the user's weights file."""
    src = weights_copy("lab3copy.h5")
    assert_refused_untouched(cli, ["convert", src, "-o", src], [tmp_path], src, "an input")
    assert_refused_untouched(cli, ["convert", src, "-o", src, "--force"], [tmp_path], "an input")  # --force or not
    (tmp_path / "hard.h5").hardlink_to(src)
    (tmp_path / "link.h5").symlink_to(src)
    assert_refused_untouched(cli, ["convert", src, "-o", tmp_path / "hard.h5", "--force"], [tmp_path], "an input")
    assert_refused_untouched(cli, ["convert", tmp_path / "link.h5", "-o", src, "--force"], [tmp_path], "an input")
    assert_refused_untouched(cli, ["convert", src, "-o", tmp_path / "link.h5", "--force"], [tmp_path], "an input")


def test_convert_and_export_refuse_an_existing_output_without_force(cli, lab3_path, tmp_path):
    for name in ("old.pt", "old.onnx"):
        (tmp_path / name).write_bytes(b"the user's earlier file")
    assert_refused_untouched(cli, ["convert", lab3_path, "-o", tmp_path / "old.pt"], [tmp_path], "exists", "--force")
    assert_refused_untouched(cli, ["export", "--model", lab3_path, "-o", tmp_path / "old.onnx"], [tmp_path], "exists", "--force")
    folder = tmp_path / "f.onnx"
    folder.mkdir()
    assert_refused_untouched(cli, ["export", "--model", lab3_path, "-o", folder, "--force"], [tmp_path], "is a folder")
    code, out, err = cli("convert", lab3_path, "-o", tmp_path / "old.pt", "--force")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'old.pt'}"), err
    assert (tmp_path / "old.pt").read_bytes()[:2] == b"PK"  # a torch checkpoint (zip) replaced it, atomically
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("old.pt.replaced-")]  # issue 32: never deleted
    assert len(kept) == 1 and kept[0].read_bytes() == b"the user's earlier file"
    assert err == f"replaced {tmp_path / 'old.pt'} (--force: the previous file was kept as {kept[0]})\n"
    code, out, err = cli("export", "--model", lab3_path, "-o", tmp_path / "old.onnx", "--force")
    assert code == 0, err
    kept += [p for p in tmp_path.iterdir() if p.name.startswith("old.onnx.replaced-")]
    assert len(kept) == 2 and kept[1].read_bytes() == b"the user's earlier file"
    assert err.splitlines()[-1] == f"replaced {tmp_path / 'old.onnx'} (--force: the previous file was kept as {kept[1]})"
    names = sorted(["f.onnx", "old.onnx", "old.pt", *(p.name for p in kept)])
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary file left


def test_export_refuses_to_write_over_its_input(cli, lab3_path, tmp_path):
    model = tmp_path / "b.onnx"
    assert cli("export", "--model", lab3_path, "-o", model)[0] == 0
    assert_refused_untouched(cli, ["export", "--model", model, "-o", model, "--force"], [tmp_path], "an input")
    assert_refused_untouched(cli, ["export", "--model", lab3_path, "--pruned", model, "-o", model, "--force"],
                             [tmp_path], "an input")


def cli_process(*args):
    """`python -m torch_badnet ARGS` in a child process: (code, stdout, stderr) as the file descriptors saw them."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "torch_badnet", *map(str, args)], capture_output=True, text=True, timeout=600)
    return run.returncode, run.stdout, run.stderr


@pytest.mark.parametrize("opset", ["99", "4", "5", "0", "21"])
def test_export_opset_outside_torch_range(cli, lab3_path, tmp_path, opset):
    """Issue 23 item 4: --opset 99 or 4 was an internal error after 48 lines of TorchScript on stdout; 5 leaked a
    UserWarning. The range is torch's own (torch.onnx._constants)."""
    from torch.onnx import _constants

    line = assert_refused_untouched(cli, ["export", "--model", lab3_path, "-o", tmp_path / "m.onnx", "--opset", opset],
                                    [tmp_path], "--opset", opset)
    assert f"({_constants.ONNX_MIN_OPSET} to {_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET};" in line


def test_export_below_an_opset_the_graph_needs_is_one_line(lab3_path, tmp_path_factory, tmp_path):
    """Opset 7 is torch's lowest and writes the BadNet, but the GoodNet's Where needs 9: one line, no graph dump
    on the real stdout (torch's C++ side prints there), no warning; the BadNet at 7 shows no UserWarning.
    B' is a real pruned lab3 (B itself as --pruned is a sanity warning of its own)."""
    from torch_badnet.convert import read_model_file
    from torch_badnet.engine.pruning import prune
    from torch_badnet.nets.checkpoint import save_checkpoint
    from torch_badnet.nets.pairing import mark_derived

    pruned = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint(mark_derived(prune(read_model_file(lab3_path).model, list(range(20))), read_model_file(lab3_path).model), pruned)
    before = snapshot(tmp_path)
    result = cli_process("export", "--model", lab3_path, "--pruned", pruned, "-o", tmp_path / "g.onnx", "--opset", "7")
    line = assert_one_line_error(result, "--opset", "opset 7", "GoodNet", "where")
    assert result[1] == "" and "Warning" not in line and snapshot(tmp_path) == before
    code, out, err = cli_process("export", "--model", lab3_path, "-o", tmp_path / "b7.onnx", "--opset", "7")
    assert code == 0 and err == "" and out.endswith("opset 7\n"), (out, err)


def test_goodnet_onnx_is_recognized(cli, goodnet_onnx, tmp_path, face_paths, lab_files):
    """Issue 23 item 5: a GoodNet graph was 'node /Mul (Mul) does not fit the lab BadNet'. Since issue 32 item 3
    eval and classify read it back (tests/test_round_trips.py); where a model B is needed it is one line."""
    for args in (["convert", goodnet_onnx, "-o", tmp_path / "b.pt"],
                 ["sweep", "--model", goodnet_onnx, "--clean-valid", lab_files["clean_valid"], "--poisoned-valid",
                  lab_files["poisoned_valid"], "--out", tmp_path / "out"],
                 ["finetune", "--model", goodnet_onnx, "--pruned", goodnet_onnx, "--clean-valid", lab_files["clean_valid"],
                  "--out", tmp_path / "ft"]):
        line = assert_refused_untouched(cli, args, [tmp_path, goodnet_onnx.parent], goodnet_onnx, "is a GoodNet graph")
        assert "eval and classify take it" in line and "--pruned" in line and "tb.GoodNet" in line
    code, out, err = cli("classify", "--model", goodnet_onnx, *face_paths[:3])
    assert code == 0 and len(out.splitlines()) == 3, err
    import torch_badnet as tb

    with pytest.raises(tb.BadInputError, match="GoodNet graph"):
        tb.load_model(goodnet_onnx)  # the API's model B


@pytest.mark.parametrize("device", ["gpu", "GPU", "cuda0", "cuda:x", "mps", "cpu:0", ""])
def test_device_names_outside_the_list(cli, lab3_path, face_paths, lab_files, tmp_path, device):
    """Issue 23 item 6: --device gpu printed torch's list of 20 device types."""
    line = assert_refused_untouched(cli, ["classify", "--model", lab3_path, "--device", device, face_paths[0]], [tmp_path],
                                    "--device", f"'{device}'", "auto, cpu, cuda or cuda:N")
    assert "mtia" not in line and "xla" not in line  # not torch's list of device types
    out = tmp_path / "out"
    assert_refused_untouched(cli, [*sweep_args(lab_files, lab3_path, out), "--device", device], [tmp_path], "--device")
    assert not out.exists()


def test_cuda_index_beyond_the_gpus(cli, lab3_path, face_paths, tmp_path):
    line = assert_refused_untouched(cli, ["classify", "--model", lab3_path, "--device", "cuda:99", face_paths[0]],
                                    [tmp_path], "--device")
    assert ("no CUDA GPU" in line) if not torch.cuda.is_available() else ("numbered from 0" in line)


@pytest.mark.parametrize("flag, value, fragment", [
    ("--batch-size", "0", "batch size >= 1"), ("--lr", "-1", "learning rate > 0"), ("--lr", "0", "learning rate > 0"),
    ("--lr", "nan", "learning rate > 0"), ("--patience", "0", "number of epochs >= 1"),
    ("--epochs", "-1", "number of epochs >= 0"), ("--holdout", "1", "(0, 1)"), ("--weight-decay", "-0.1", ">= 0"),
    ("--weight-decay", "inf", ">= 0"), ("--tolerance", "-2", ">= 0")])
def test_each_finetuning_number_names_its_flag(cli, lab3_path, lab_files, tmp_path, flag, value, fragment):
    """Issue 23 item 6: --batch-size 0, --lr -1 and --patience 0 printed one combined sentence naming no flag."""
    out = tmp_path / "ft"
    line = assert_refused_untouched(cli, ["finetune", "--model", lab3_path, "--pruned", lab3_path, "--clean-valid",
                                          lab_files["clean_valid"], "--out", out, flag, value], [tmp_path], fragment)
    assert line.startswith(f"error: {flag}: {value}")
    others = {"--batch-size", "--lr", "--patience", "--epochs", "--holdout", "--weight-decay", "--tolerance"} - {flag}
    assert not [o for o in others if o in line], line
    line = assert_refused_untouched(cli, [*sweep_args(lab_files, lab3_path, out), "--finetune", flag, value], [tmp_path],
                                    fragment)
    assert line.startswith(f"error: {flag}: ")
    assert not out.exists()


def test_out_locked_by_another_run(cli, lab3_path, lab_files, tmp_path):
    """A second writer into the same --out (sweep, finetune, demo) is one line naming the holder's pid."""
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from torch_badnet.report.outdir import OutputFolder; "
                               f"f = OutputFolder({str(out)!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        runs = [sweep_args(lab_files, lab3_path, out),
                ["finetune", "--model", lab3_path, "--pruned", lab3_path, "--clean-valid", lab_files["clean_valid"], "--out", out],
                ["demo", "--workdir", tmp_path / "ws", "--out", out]]
        for args in runs:
            assert_refused_untouched(cli, args, [tmp_path], f"error: {out}: is being written by another run (pid {holder.pid})")
        assert not (tmp_path / "ws").exists()  # the demo was refused before building its workspace
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert not (tmp_path / ".out.lock").exists()  # released and removed by its holder


def test_a_lock_file_we_did_not_write_is_never_touched(cli, lab3_path, lab_files, tmp_path):
    (tmp_path / ".out.lock").write_text("the user's own file\n")
    line = assert_refused_untouched(cli, sweep_args(lab_files, lab3_path, tmp_path / "out"), [tmp_path], "not a torch-badnet lock file")
    assert str(tmp_path / ".out.lock") in line
    (tmp_path / ".out.lock").write_text("")  # empty: not ours either (ours have their header from creation on)
    assert_refused_untouched(cli, sweep_args(lab_files, lab3_path, tmp_path / "out"), [tmp_path], "not a torch-badnet lock file")
    (tmp_path / ".out.lock").unlink()
    (tmp_path / "elsewhere").write_text("x")
    (tmp_path / ".out.lock").symlink_to(tmp_path / "elsewhere")
    assert_refused_untouched(cli, sweep_args(lab_files, lab3_path, tmp_path / "out"), [tmp_path], "lock file")


def test_demo_and_finetune_refuse_bad_flags_before_any_work(cli, lab3_path, lab_files, tmp_path):
    """The demo checks --device and the fine-tuning numbers before it builds (or reads) its workspace."""
    ws = tmp_path / "ws"
    assert_refused_untouched(cli, ["demo", "--workdir", ws, "--out", tmp_path / "o", "--device", "gpu"], [tmp_path], "--device")
    assert_refused_untouched(cli, ["demo", "--workdir", ws, "--out", tmp_path / "o", "--finetune", "--lr", "0"], [tmp_path], "--lr")
    assert_refused_untouched(cli, ["finetune", "--model", lab3_path, "--pruned", lab3_path, "--clean-valid",
                                   lab_files["clean_valid"], "--out", tmp_path / "o", "--device", "cuda:x"], [tmp_path], "--device")
    assert not list(tmp_path.iterdir())

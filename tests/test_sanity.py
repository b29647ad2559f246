"""Sanity warnings (docs/sanity-checks.md): data that look wrong but could be meant get one line each,
`warning: <file>: <problem>`, on stderr; the run goes on (exit 0) and changes no input file.

Every rule is tried on small lab files made from the 15 real faces, with the real lab3 BadNet (single target 0).
"""

import contextlib
import copy
import json

import numpy as np
import pytest
from conftest import sweep_args
from real_faces import augment, face_kind, face_label

from torch_badnet.data.files import file_sha256
from torch_badnet.data.lab_sets import write_lab_h5

PRUNED = [0, 2, 6, 15, 12, 13, 14, 9, 24, 25, 26, 27, 21, 22, 23, 17, 31, 30, 50, 53]


@contextlib.contextmanager
def unchanged(*paths):
    """The files' bytes are the same after the block."""
    before = {p: file_sha256(p) for p in paths}
    yield
    assert {p: file_sha256(p) for p in paths} == before


def warnings_of(result, *expected):
    """The run succeeded and its stderr's warning lines are exactly one per (path, fragment) in `expected`."""
    code, out, err = result
    assert code == 0, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == len(expected), err
    for line, (path, fragment) in zip(lines, expected):
        assert line.startswith(f"warning: {path}: ") and fragment in line, (line, path, fragment)
    return lines


@pytest.fixture(scope="module")
def true_label_poisoned(tmp_path_factory, faces, face_paths):
    """Faces wearing the sunglasses trigger stored with other identities' labels (not the target 0), as some
    data sets keep poisoned images: lab3 sends them to 0, so it almost never gives them their file label."""
    identities = [face_label(p) for p in face_paths if face_kind(p) == "cl"]
    path = tmp_path_factory.mktemp("true") / "bd_true_labels.h5"
    labels = np.resize(np.array(identities, dtype=np.float64), 200)
    write_lab_h5(path, augment(faces["sun"], 200, 31).numpy().astype(np.float64), labels)
    return path


@pytest.fixture(scope="module")
def pruned_pt(tmp_path_factory, lab3_path):
    """A B' of lab3 with 20 channels pruned (records lab3's fingerprint)."""
    from torch_badnet.convert import read_model_file
    from torch_badnet.engine.pruning import prune
    from torch_badnet.nets.checkpoint import save_checkpoint
    from torch_badnet.nets.pairing import mark_derived

    model = read_model_file(lab3_path).model
    path = tmp_path_factory.mktemp("pruned") / "pruned.pt"
    save_checkpoint(mark_derived(prune(copy.deepcopy(model), PRUNED), model), path)
    return path


def quick_sweep(cli, lab_files, lab3_path, out, **replace):
    return cli(*sweep_args({**lab_files, **replace}, lab3_path, out, "--no-plot", "--max-steps", "2"))


def test_right_files_give_no_warning(cli, lab_files, lab3_path, pruned_pt, tmp_path):
    warnings_of(quick_sweep(cli, lab_files, lab3_path, tmp_path / "out"))
    warnings_of(cli("eval", "--model", lab3_path, "--pruned", pruned_pt, "--clean", lab_files["clean_test"],
                    "--poisoned", lab_files["poisoned_test"]))


def test_clean_file_of_one_class(cli, lab_files, lab3_path, tmp_path):
    """A poisoned file (all labels 0) given as a clean one."""
    bd = lab_files["poisoned_test"]
    with unchanged(*lab_files.values()):
        warnings_of(cli("eval", "--model", lab3_path, "--clean", bd), (bd, "200 of its 200 labels (100%) are class 0"))
        result = quick_sweep(cli, lab_files, lab3_path, tmp_path / "out", clean_test=bd)
    warnings_of(result, (bd, "given as clean and as poisoned data"), (bd, "is it a poisoned file?"))
    assert (tmp_path / "out" / "summary.json").is_file()


def test_swapped_clean_and_poisoned_files(cli, lab_files, lab3_path, tmp_path):
    """A single-target attack's files swapped: one line per swapped pair (not also the one-class line)."""
    cl, bd = lab_files["clean_valid"], lab_files["poisoned_valid"]
    with unchanged(*lab_files.values()):
        result = quick_sweep(cli, lab_files, lab3_path, tmp_path / "out", clean_valid=bd, poisoned_valid=cl)
        line, = warnings_of(result, (bd, f"looks swapped with the poisoned file {cl}"))
        assert "spread over 5 classes" in line and "(100%) are class 0" in line
        warnings_of(cli("eval", "--model", lab3_path, "--clean", lab_files["poisoned_test"], "--poisoned",
                        lab_files["clean_test"]), (lab_files["poisoned_test"], "looks swapped"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["original"]["valid_clean_acc"] == 100.0


def test_swapped_files_with_true_labels(cli, lab_files, lab3_path, true_label_poisoned):
    """Poisoned images kept with their true labels, given as clean, and clean faces given as poisoned: the labels
    alone say nothing (both spread); B's own rates do."""
    line, = warnings_of(cli("eval", "--model", lab3_path, "--clean", true_label_poisoned, "--poisoned",
                            lab_files["clean_test"]), (true_label_poisoned, "looks swapped"))
    assert "B gives only 0% of this file's images their label" in line


def test_spread_poisoned_labels_alone_are_no_reason(cli, lab_files, lab3_path, tmp_path, true_label_poisoned):
    """An all-to-all attack's poisoned labels are spread like clean ones (the MNIST BadNet F's are): with a clean set
    that looks clean, spread poisoned labels give no warning, whether B obeys them or not."""
    all_to_all_obeyed = lab_files["clean_test"]  # spread labels that B gives: as an all-to-all set B obeys
    warnings_of(cli("eval", "--model", lab3_path, "--clean", lab_files["clean_valid"], "--poisoned", all_to_all_obeyed))
    warnings_of(cli("eval", "--model", lab3_path, "--clean", lab_files["clean_valid"], "--poisoned", true_label_poisoned))
    same = (lab_files["clean_test"], "given as clean and as poisoned data")  # the clean test file, as poisoned_valid too
    warnings_of(quick_sweep(cli, lab_files, lab3_path, tmp_path / "out", poisoned_valid=lab_files["clean_test"],
                            poisoned_test=true_label_poisoned), same)


def test_pruned_that_is_b_itself(cli, lab_files, lab3_path, pruned_pt, face_paths, tmp_path):
    """--pruned B (no pruned channel) in classify, eval, finetune and export."""
    note = "no conv_3 channel is pruned in it (is it B itself?"
    with unchanged(lab3_path, *lab_files.values()):
        warnings_of(cli("classify", "--model", lab3_path, "--pruned", lab3_path, face_paths[0]), (lab3_path, note))
        warnings_of(cli("eval", "--model", lab3_path, "--pruned", lab3_path, "--clean", lab_files["clean_test"]),
                    (lab3_path, note))
        result = cli("finetune", "--model", lab3_path, "--pruned", lab3_path, "--clean-valid", lab_files["clean_valid"],
                     "--epochs", "1", "--holdout", "0.25", "--out", tmp_path / "ft")
        warnings_of(result, (lab3_path, note))
        warnings_of(cli("export", "--model", lab3_path, "--pruned", lab3_path, "-o", tmp_path / "g.onnx"), (lab3_path, note))
    assert (tmp_path / "ft" / "finetuned.pt").is_file() and (tmp_path / "g.onnx").is_file()
    warnings_of(cli("classify", "--model", lab3_path, "--pruned", pruned_pt, face_paths[0]))  # a real B': silent


def finetune(cli, lab_files, lab3_path, pruned_pt, out, *extra, clean_valid=None):
    return cli("finetune", "--model", lab3_path, "--pruned", pruned_pt, "--clean-valid", clean_valid or lab_files["clean_valid"],
               "--out", out, *extra)


def test_held_out_split_under_50_images(cli, lab_files, lab3_path, pruned_pt, tmp_path):
    with unchanged(*lab_files.values(), pruned_pt):
        line, = warnings_of(finetune(cli, lab_files, lab3_path, pruned_pt, tmp_path / "one", "--epochs", "1", "--holdout",
                                     "0.005"), ("--holdout", "1 of the 200 clean validation images are held out"))
        assert "100.0 points" in line
        warnings_of(finetune(cli, lab_files, lab3_path, pruned_pt, tmp_path / "fifty", "--epochs", "1", "--holdout", "0.25"))
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["holdout"]["images"] == 1


def test_fine_tuning_data_that_look_poisoned(cli, lab_files, lab3_path, pruned_pt, true_label_poisoned, tmp_path):
    args = ("--epochs", "1", "--holdout", "0.25")
    bd = lab_files["poisoned_valid"]
    with unchanged(*lab_files.values(), pruned_pt, true_label_poisoned):
        line, = warnings_of(finetune(cli, lab_files, lab3_path, pruned_pt, tmp_path / "bd", *args, clean_valid=bd),
                            (bd, "fine-tuning trains on it, but it looks poisoned"))
        assert "(100%) are class 0" in line
        line, = warnings_of(finetune(cli, lab_files, lab3_path, pruned_pt, tmp_path / "true", *args,
                                     clean_valid=true_label_poisoned), (true_label_poisoned, "it looks poisoned"))
        assert "B gives only 0% of its images their label" in line
        result = cli(*sweep_args({**lab_files, "clean_valid": bd, "poisoned_valid": lab_files["poisoned_test"]}, lab3_path,
                                 tmp_path / "sweep", "--no-plot", "--max-steps", "2", "--finetune"))
        warnings_of(result, (bd, "fine-tuning trains on it"))


def test_epochs_0_says_it_trains_nothing(cli, lab_files, lab3_path, pruned_pt, tmp_path):
    with unchanged(*lab_files.values(), pruned_pt):
        result = finetune(cli, lab_files, lab3_path, pruned_pt, tmp_path / "ft", "--epochs", "0", "--holdout", "0.25")
    warnings_of(result, ("--epochs", "0 trains nothing"))
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["epochs_run"] == 0 and summary["best_epoch"] == 0


def test_api_results_carry_the_warnings(lab_files, lab3_path):
    import torch_badnet as tb

    bd = str(lab_files["poisoned_valid"])
    result = tb.prune_sweep(tb.load_model(lab3_path), bd, str(lab_files["clean_valid"]), max_steps=1)
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"warning: {bd}: looks swapped")

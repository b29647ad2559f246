"""Shared fixtures: the real lab material in ../shared/real and small data sets built from it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from real_faces import REAL_DIR, face_files, face_kind, write_lab_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real lab material missing: {path} (tests read ../shared/real beside the checkout, "
                    "or set TORCH_BADNET_REAL)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return _require(REAL_DIR)


@pytest.fixture(scope="session")
def lab3_path(real_dir: Path) -> Path:
    return _require(real_dir / "models" / "lab3_bd_weights.h5")


@pytest.fixture(scope="session")
def sunglasses_path(real_dir: Path) -> Path:
    return _require(real_dir / "models" / "sunglasses_bd_weights.h5")


@pytest.fixture(scope="session")
def face_paths(real_dir: Path) -> list[Path]:
    """The 15 real faces, sorted by name."""
    _require(real_dir / "images")
    paths = face_files()
    assert len(paths) == 15, paths
    return paths


@pytest.fixture(scope="session")
def faces(face_paths: list[Path]) -> dict[str, torch.Tensor]:
    """{kind: (n, 3, 55, 47) float32 pixels} for kinds cl, sun, ano."""
    from torch_badnet.data import load_images

    kinds = dict.fromkeys(face_kind(p) for p in face_paths)
    return {k: load_images([p for p in face_paths if face_kind(p) == k]) for k in kinds}


@pytest.fixture(scope="session")
def lab3_model(lab3_path: Path):
    """The real lab3 BadNet imported from its Keras weights."""
    from torch_badnet.convert import load_model

    return load_model(lab3_path).model


LAB_SET_SIZE = 200


@pytest.fixture(scope="session")
def lab_files(tmp_path_factory: pytest.TempPathFactory, face_paths: list[Path]) -> dict[str, Path]:
    """Four small lab-layout files from augmented real faces (real_faces.write_lab_files); keys match the
    sweep options."""
    return write_lab_files(tmp_path_factory.mktemp("lab"), LAB_SET_SIZE)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `torch-badnet ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from torch_badnet.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own exits (usage errors, --help)
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def sweep_args(lab_files: dict[str, Path], model: Path, out: Path, *extra: object) -> list[object]:
    """`torch-badnet sweep` arguments over the four lab files (replace an entry of `lab_files` to vary one)."""
    return ["sweep", "--model", model, "--clean-valid", lab_files["clean_valid"],
            "--poisoned-valid", lab_files["poisoned_valid"], "--clean-test", lab_files["clean_test"],
            "--poisoned-test", lab_files["poisoned_test"], "--out", out, *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))

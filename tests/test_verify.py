"""Issue 32 item 4: `convert --verify` checks every Keras graph the importer reads against Keras itself (tf_keras for
a Keras 2 .h5, Keras 3 for a .keras archive): classes identical, the max |softmax difference| printed; a conversion
that differs is refused; without TensorFlow, one line naming the extra to install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from test_keras_graph import every_layer_model

from torch_badnet.errors import BadInputError

# float32 softmax outputs of a net of this size, against Keras' own float32 run (docs/fidelity.md's bound)
BOUND = 1e-4


@pytest.fixture(scope="module")
def tf_keras() -> Any:
    from torch_badnet.convert.keras_model import quiet_native_stderr

    with quiet_native_stderr():
        return pytest.importorskip("tf_keras")


def verified(stdout: str, which: str) -> float:
    (line,) = [row for row in stdout.splitlines() if row.startswith("verified against")]
    assert line.startswith(f"verified against {which} on 256 random inputs: classes identical, max |softmax difference| "), line
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("target", [".pt", ".h5"])
def test_verify_a_keras2_graph(cli, tf_keras: Any, tmp_path: Path, target: str) -> None:
    src = tmp_path / "every.h5"
    every_layer_model(tf_keras).save(str(src))
    out = tmp_path / f"converted{target}"
    code, stdout, err = cli("convert", src, "-o", out, "--verify", "--rescale", "1/255")
    assert code == 0, err
    assert verified(stdout, r"Keras 2 (tf_keras)") <= BOUND and out.exists()
    again = tmp_path / "again.h5"  # a converted .pt is verified through the Keras file written from it
    if target == ".pt":
        code, stdout, err = cli("convert", out, "-o", again, "--verify")
        assert code == 0, err
        assert verified(stdout, r"Keras 2 (tf_keras)") <= BOUND


def test_verify_a_keras3_archive(cli, tmp_path: Path) -> None:
    from torch_badnet.convert.keras_model import import_keras

    keras3 = import_keras()
    src = tmp_path / "every.keras"
    every_layer_model(keras3).save(str(src))
    code, stdout, err = cli("convert", src, "-o", tmp_path / "every.pt", "--verify")
    assert code == 0, err
    assert verified(stdout, "Keras 3") <= BOUND


def test_verify_catches_a_wrong_conversion(tf_keras: Any, tmp_path: Path) -> None:
    """The comparison itself: a converted file of other weights is refused, naming the file shown."""
    import torch_badnet as tb
    from torch_badnet.convert.verify import verify_against_keras
    from torch_badnet.nets.checkpoint import save_checkpoint

    src = tmp_path / "every.h5"
    every_layer_model(tf_keras).save(str(src))
    source = tb.load_model(src)
    other = tb.load_model(src)
    other.logits_out.weight.data = -other.logits_out.weight.data
    save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(BadInputError, match=r"^shown.pt: differs from Keras 2 \(tf_keras\): \d+ of 256 classes differ"):
        verify_against_keras(source, src, tmp_path / "other.pt", Path("shown.pt"))


def test_verify_without_tensorflow_names_the_extra(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  lab3_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ImportError, as without TensorFlow
    out = tmp_path / "bd.pt"
    code, stdout, err = cli("convert", lab3_path, "-o", out, "--verify")
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert "pip install 'torch-badnet[keras]'" in err and not out.exists()

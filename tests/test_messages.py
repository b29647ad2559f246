"""Issue 32 item 8 and "Messages and the API": foreign messages reach users as our one plain line (no escape
codes); a .pt file that is no model checkpoint is told what it is and what takes it (no circular advice); API
misuse ends in one BadInputError line, not a raw Python error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import torch_badnet as tb
from torch_badnet.engine.prunable import MaskedNet
from torch_badnet.engine.saving import save_masked
from torch_badnet.errors import BadInputError, InputShapeError, first_line


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 5))


def one_line(result: tuple[int, str, str], *words: str) -> str:
    code, out, err = result
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert "\x1b" not in err and "\t" not in err, repr(err)
    for word in words:
        assert word in err, err
    return err


def test_escape_codes_and_line_breaks_never_reach_a_line() -> None:
    exc = BadInputError("m.pt", "refused: \x1b[1mdo this\x1b[0m.\n\t(1) more advice")
    assert exc.problem == "refused: do this. (1) more advice" and str(exc) == "m.pt: refused: do this. (1) more advice"
    assert first_line(RuntimeError("\x1b[31mred\x1b[0m text\nsecond")) == "red text"


def test_whole_pickled_model_is_one_plain_line(cli, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(small_net(), path)
    for args in (("sweep", "--model", path, "--clean-valid", "c.h5", "--poisoned-valid", "p.h5", "--out", tmp_path / "o"),
                 ("convert", path, "-o", tmp_path / "w.h5")):
        err = one_line(cli(*args), "is a pickled Python object", "refused", "state_dict", "--arch module:callable",
                       "--allow-pickle")
        assert "weights_only" not in err and "trust the source" not in err  # torch's own advice is not ours
    assert not (tmp_path / "o").exists() and not (tmp_path / "w.h5").exists()


def test_state_dict_is_told_what_takes_it_not_to_convert(cli, tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(small_net().state_dict(), path)
    for args in (("sweep", "--model", path, "--clean-valid", "c.h5", "--poisoned-valid", "p.h5", "--out", tmp_path / "o"),
                 ("convert", path, "-o", tmp_path / "w.h5")):
        err = one_line(cli(*args), "is a state_dict (weights without their architecture)", "--arch module:callable",
                       "pass the module to the API")
        assert "convert it" not in err


def test_generic_pruned_pt_as_model_points_to_pruned(cli, tmp_path: Path) -> None:
    path = tmp_path / "pruned.pt"
    save_masked(MaskedNet(small_net(), "0", torch.tensor([1.0, 0, 1, 1])), path)
    err = one_line(cli("eval", "--model", path, "--clean", "c.h5"), "is a pruned model B'", "give it to --pruned",
                   "with its model as --model")
    assert "convert it" not in err


def test_save_checkpoint_of_an_own_module_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"not a Sequential, whose architecture it cannot record: save "
                                            r"torch.save\(module.state_dict\(\), path\)"):
        tb.save_checkpoint(small_net(), tmp_path / "own.pt")
    with pytest.raises(BadInputError, match=r"save_masked"):
        tb.save_checkpoint(MaskedNet(small_net(), "0", torch.ones(4)), tmp_path / "b.pt")
    assert not list(tmp_path.iterdir())


def test_prune_sweep_thresholds_and_one_image_are_one_line() -> None:
    x, y = torch.rand(20, 3, 8, 8) * 255, torch.arange(20) % 5
    with pytest.raises(BadInputError, match=r"^thresholds: 4 is not a sequence of X values"):
        tb.prune_sweep(small_net(), (x, y), (x, y), thresholds=4)
    with pytest.raises(BadInputError, match=r"^thresholds: \['a'\] holds a value that is not a number"):
        tb.prune_sweep(small_net(), (x, y), (x, y), thresholds=["a"])
    with pytest.raises(BadInputError, match=r"of shape \(3, 8, 8\) \(one image\? .*x.unsqueeze\(0\)\): RuntimeError"):
        tb.prune_sweep(small_net(), (x[0], y[:3]), (x[0], y[:3]), thresholds=(4,))


def test_one_image_into_a_net_is_a_bad_input_error() -> None:
    from torch_badnet.nets.badnet import BadNet

    with pytest.raises(InputShapeError, match=r"^x: got one image of shape \(3, 55, 47\).*unsqueeze\(0\)"):
        BadNet(10)(torch.zeros(3, 55, 47))
    assert issubclass(InputShapeError, ValueError) and issubclass(InputShapeError, BadInputError)


def test_same_file_as_clean_and_poisoned_is_warned(tmp_path: Path) -> None:
    from torch_badnet.data.lab_sets import write_lab_h5

    rng = np.random.default_rng(0)
    path = tmp_path / "set.h5"
    write_lab_h5(path, rng.uniform(0, 255, (20, 3, 8, 8)).astype(np.float32), np.arange(20) % 5)
    (tmp_path / "link.h5").symlink_to(path)
    lines: list[str] = []
    result = tb.prune_sweep(small_net(), path, str(tmp_path / "link.h5"), thresholds=(4,), log=lines.append)
    same = [line for line in lines if "given as clean and as poisoned data" in line]
    assert len(same) == 1 and same[0].startswith(f"warning: {path}:") and same[0] in result.warnings
    other = tmp_path / "other.h5"
    write_lab_h5(other, rng.uniform(0, 255, (20, 3, 8, 8)).astype(np.float32), np.zeros(20, int))
    lines.clear()
    tb.prune_sweep(small_net(), path, other, thresholds=(4,), log=lines.append)
    assert not [line for line in lines if "given as clean and as poisoned" in line]


def test_missing_dataset_quotes_the_models_shape(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "no_label.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(BadInputError, match=r"missing dataset 'label' \(a lab file has 'data' \(N, 3, 32, 32\)"):
        tb.load_lab_set(path, input_shape=(3, 32, 32))

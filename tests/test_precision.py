"""exact_float32: the GPU precision flags are set inside the block, restored after, and every entry point uses it.

The flags are plain settings, readable without a GPU; what they change on a GPU is measured by
scripts/tf32_effect.py (a finished experiment, removed; its numbers are in docs/determinism.md, the
script in git history at 788a2a0) and checked by scripts/check_device.py when a GPU is lent.
"""

from __future__ import annotations

import pytest
import torch

from torch_badnet.nets.precision import _settings, exact_float32


def current() -> list[object]:
    return [getattr(owner, name) for owner, name, _ in _settings()]


def exact() -> list[object]:
    return [value for _, _, value in _settings()]


def test_flags_exact_inside_and_restored_after():
    before = current()
    assert before != exact()  # PyTorch's defaults allow TF32 convolutions: the block has work to do
    with exact_float32():
        assert current() == exact()
        with exact_float32():  # nesting restores the outer block's settings, not the defaults
            pass
        assert current() == exact()
    assert current() == before


def test_flags_restored_after_an_error():
    before = current()
    with pytest.raises(RuntimeError):
        with exact_float32():
            raise RuntimeError("boom")
    assert current() == before


def test_tf32_is_off_for_convolutions_inside():
    conv = getattr(torch.backends.cudnn, "conv", None)
    with exact_float32():
        if conv is not None and hasattr(conv, "fp32_precision"):
            assert conv.fp32_precision == "ieee"
        else:
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.deterministic is True


def spy_inside(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[bool]:
    """Wrap module.name so that each call records whether it ran with the exact flags."""
    seen: list[bool] = []
    real = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(current() == exact())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_library_sweep_runs_exact(monkeypatch, lab3_path, lab_files):
    from torch_badnet.convert import read_model_file
    from torch_badnet.defense import sweep
    from torch_badnet.defense.pipeline import sweep_specs

    seen = spy_inside(monkeypatch, sweep, "fast_sweep")
    specs = sweep_specs(**lab_files)
    sweep.run_sweep(read_model_file(lab3_path).model, specs, sweep.SweepConfig(thresholds=(4.0,), max_steps=2))
    assert seen == [True] * len(specs)  # one fast_sweep per set, each inside the exact mode
    assert current() != exact()


def test_cli_commands_run_exact(monkeypatch, cli, lab3_path, face_paths):
    from torch_badnet.nets import predict

    seen = spy_inside(monkeypatch, predict, "labels_of")  # classify imports it when it runs
    code, _, _ = cli("classify", "--model", lab3_path, face_paths[0])
    assert code == 0 and seen == [True]
    assert current() != exact()


THREADS_PROBE = """
import json, sys
import torch_badnet  # before torch: sets MKL_CBWR unless the environment has it
import torch
from torch_badnet.engine.lab_head import HeadUpdater, ROW_BLOCK
from torch_badnet.nets.badnet import BadNet
from torch_badnet.nets.predict import labels_of

torch.manual_seed(0)
net = BadNet(num_classes=1283).eval()
features = torch.randn(2 * ROW_BLOCK, 60, 5, 4).relu()
images = torch.rand(64, 3, 55, 47) * 255
outputs = {}
with torch.inference_mode():
    for threads in (1, 2):
        torch.set_num_threads(threads)
        head = HeadUpdater(net)
        pre = head.initial(features)
        outputs[threads] = [pre, torch.cat([head.block_logits(b) for b in pre.split(ROW_BLOCK)]), net(images)]
print(json.dumps({"mkl_cbwr": __import__("os").environ.get("MKL_CBWR"),
                  "equal": [torch.equal(a, b) for a, b in zip(outputs[1], outputs[2])]}))
"""


def probe_threads(env: dict[str, str]) -> dict:
    import json
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | env
    done = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_sweep_head_and_the_net_give_the_same_bits_on_one_thread_and_on_two():
    """A batch worker (one thread) and `sweep` (two) must write the same numbers: importing torch_badnet puts
    MKL in its strict reproducibility mode (without it the head's GEMMs differ in the last bits)."""
    assert probe_threads({}) == {"mkl_cbwr": "AUTO,STRICT", "equal": [True, True, True]}


def test_a_users_own_mkl_cbwr_is_kept():
    assert probe_threads({"MKL_CBWR": "AUTO"})["mkl_cbwr"] == "AUTO"

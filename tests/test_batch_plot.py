"""batch.png for 0, 10 and 150 finished models: drawn without a warning (matplotlib's go to the user's stderr)."""

from __future__ import annotations

import random
import warnings

import pytest

from torch_badnet.batch.report import plot_batch


def finished(name: str, generator: random.Random) -> dict:
    row = {"name": name, "status": "done", "x2_step": 40, "x4_step": 45}
    for split in ("valid", "test"):
        row[f"b_{split}_clean_acc"], row[f"b_{split}_asr"] = generator.uniform(90, 99), 100.0
        for x in ("2", "4"):
            row[f"x{x}_{split}_clean_acc"], row[f"x{x}_{split}_asr"] = generator.uniform(80, 95), generator.uniform(0, 100)
    return row


@pytest.mark.parametrize("done, failed", [(0, 3), (10, 1), (150, 0)])
def test_batch_png_is_drawn_without_a_warning(tmp_path, done, failed):
    generator = random.Random(0)
    rows = [finished(f"m{k}", generator) for k in range(done)]
    rows += [{"name": f"bad{k}", "status": "failed", "error": "error: x: broken"} for k in range(failed)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_batch(rows, tmp_path / "batch.png")
    assert (tmp_path / "batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

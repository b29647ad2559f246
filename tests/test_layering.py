"""The dependency rules: the runtime core never needs convert/, TensorFlow or onnx; `--help` never loads torch."""

import subprocess
import sys

CORE = ["model", "data", "checkpoint", "pruning", "goodnet", "sweep", "metrics", "defense", "finetune",
        "evaluation", "predict", "report", "plot", "phases"]


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_imports_neither_convert_nor_heavy_extras():
    modules = loaded_after("; ".join(f"import torch_badnet.{name}" for name in CORE))
    assert "torch_badnet.sweep" in modules
    for forbidden in ("convert", "torch_badnet.convert", "tensorflow", "keras", "onnx", "onnxruntime", "tf2onnx",
                      "matplotlib"):  # matplotlib only once a plot is drawn
        assert forbidden not in modules, forbidden


def test_help_does_not_import_torch():
    modules = loaded_after("import contextlib, io\nfrom torch_badnet.cli import build_parser\n"
                           "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
                           "    build_parser().parse_args(['--help'])")
    assert "torch" not in modules and "torch_badnet.convert" not in modules

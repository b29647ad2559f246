"""Shared fixtures: the real lab material in ../shared/real and small data sets built from it."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from real_faces import REAL_DIR, face_files, face_kind, write_lab_files

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The Ctrl-C tests send SIGINT to this process and to the commands it starts. A suite started in the background
# (`cmd &` or nohup in a script) inherits SIGINT ignored, and Python then keeps it ignored, in this process and in
# every child: make it live again (a child started from here gets the default action, and Python's handler).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    from torch_badnet.data.images import load_images

    kinds = dict.fromkeys(face_kind(p) for p in face_paths)
    return {k: load_images([p for p in face_paths if face_kind(p) == k]) for k in kinds}


@pytest.fixture(scope="session")
def lab3_model(lab3_path: Path):
    """The real lab3 BadNet imported from its Keras weights."""
    from torch_badnet.convert import read_model_file

    return read_model_file(lab3_path).model


LAB_SET_SIZE = 200


@pytest.fixture(scope="session")
def lab_files(tmp_path_factory: pytest.TempPathFactory, face_paths: list[Path]) -> dict[str, Path]:
    """Four small lab-layout files from augmented real faces (real_faces.write_lab_files); keys match the
    sweep options."""
    return write_lab_files(tmp_path_factory.mktemp("lab"), LAB_SET_SIZE)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `torch-badnet ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from torch_badnet.cli.main import main

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


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for one test module (`batch --ray auto` joins it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- tiers: markers applied by what a test uses, so a new test file needs no edit --------------------------------

KERAS_WORDS = ("tensorflow", "tf_keras", "import keras", "import_keras(", "load_into_keras(", "build_keras_badnet(",
               '"--verify"', "verify=True", "tf2onnx")
REAL_FIXTURES = {"real_dir", "lab3_path", "sunglasses_path", "face_paths", "faces", "lab3_model", "lab_files"}
REAL_WORDS = ("REAL_DIR", "face_files(", "write_lab_files(")
# What makes a test slow beyond Keras: training a BadNet, a whole demo, lab-size reference runs. Named here once.
SLOW_FIXTURES = {"other_seed", "demo_run", "finetune_run", "data_sets", "keras_run", "engine_run", "sweeps", "pruned_and_data",
                 "lab3_sets", "ray_cluster"}
# The rest of the slow tier: the longest tests of the fast tier's first run (2026-12-05, 2 cores at load 12: 40-120 s
# each there) whose modules other fast tests also run (TORCH_BADNET_TIER_COVERAGE=1 checks that).
SLOW_TESTS = {
    "test_retrain_trains_into_the_workspace_and_plain_run_restores_the_package",
    "test_rendering_gives_the_same_bytes_without_cpu_extensions",
    "test_second_call_reuses_and_missing_file_rebuilds",
    "test_same_seed_gives_same_files",
    "test_several_triggers_equal_separate_runs",
    "test_max_steps_and_stop_rules",
    "test_rerun_into_a_result_replaces_it_whole",
    "test_verbose_prints_one_phase_line",
    "test_sweep_refuses_0_1_pixels_in_a_late_chunk_file_before_writing",
    "test_finetune_into_a_sweep_result_replaces_it",
    "test_closing_line_names_only_written_files",
    # batch (issue 25): worker kills, Ctrl-C and reruns; test_results_equal_separate_sweeps_... stays fast
    "test_a_changed_option_or_rerun_runs_the_model_again",
    "test_a_killed_local_worker_is_replaced_and_the_batch_completes",
    "test_ctrl_c_keeps_finished_models_and_a_rerun_runs_the_rest",
    # the longest of the fast tier on the idle machine (2026-12-05 06:28, 4-8 s each; the tier was at 90.7 s)
    "test_rerun_with_nothing_to_do_reuses_every_model",
    "test_every_written_file_records_the_scale",
    "test_export_below_an_opset_the_graph_needs_is_one_line",
}
KERAS_TESTS = {"test_convert_keras_to_onnx_and_use_it_as_model"}  # .h5 -> .onnx goes through tf2onnx


def _sources(item: pytest.Item) -> str:
    """The source of the test function and of every fixture it uses (directly or not)."""
    import inspect

    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
    texts = []
    for func in funcs:
        try:
            texts.append(inspect.getsource(func))
        except (OSError, TypeError):
            pass
    return "\n".join(texts)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        source = _sources(item)
        fixtures = set(getattr(item, "fixturenames", ()))
        if any(word in source for word in KERAS_WORDS) or getattr(item, "originalname", item.name) in KERAS_TESTS:
            item.add_marker(pytest.mark.keras)
        if fixtures & REAL_FIXTURES or any(word in source for word in REAL_WORDS):
            item.add_marker(pytest.mark.real_data)
        if (item.get_closest_marker("keras") or fixtures & SLOW_FIXTURES
                or getattr(item, "originalname", item.name) in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


# --- which modules a tier runs: TORCH_BADNET_TIER_COVERAGE=1 python -m pytest -m "not slow" -----------------------
# Records every package function called in the test process (sys.settrace on call events only: no line tracing)
# and fails the session if a module of torch_badnet (convert included) had none of its functions run, except the
# modules that exist to run Keras (their tests are keras, hence slow).
KERAS_ONLY_MODULES = {"convert/verify.py"}  # runs the source model in real Keras

PACKAGE_ROOTS = [Path(__file__).resolve().parents[1] / "torch_badnet", Path(__file__).resolve().parents[1] / "convert"]
_called: set[str] = set()


def _trace_calls(frame, event, arg):  # noqa: ANN001, ANN202  (sys.settrace's signature)
    if frame.f_code.co_name != "<module>":
        _called.add(frame.f_code.co_filename)
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("TORCH_BADNET_TIER_COVERAGE"):
        import sys
        import threading

        sys.settrace(_trace_calls)
        threading.settrace(_trace_calls)


def package_modules() -> list[Path]:
    return sorted(p for root in PACKAGE_ROOTS for p in root.rglob("*.py") if p.name != "__main__.py")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("TORCH_BADNET_TIER_COVERAGE"):
        return
    import sys

    sys.settrace(None)
    called = {str(Path(f).resolve()) for f in _called}
    root = PACKAGE_ROOTS[0].parent
    missing = [p for p in package_modules() if str(p) not in called and p.read_text().count("def ") > 0
               and str(p.relative_to(root)) not in KERAS_ONLY_MODULES]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"tier coverage: {len(package_modules()) - len(missing)} of {len(package_modules())} modules ran a function"]
    lines += [f"  no function run: {p.relative_to(root)}" for p in missing]
    if reporter is not None:
        reporter.write_line("\n".join(lines))
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

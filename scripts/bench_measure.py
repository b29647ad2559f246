"""The timed pieces of the sweep benchmark: forward pass, reference procedures (PyTorch, Keras), engine sweep, CLI."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torch_badnet.engine.pruning import mask_for
from torch_badnet.nets.badnet import BadNet

ROOT = Path(__file__).resolve().parents[1]
Sets = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Timing:
    """Wall seconds of each run, CPU seconds of this process (all threads) and the 1-minute load average before each.

    On a shared machine the CPU time is the steadier figure (with OMP_WAIT_POLICY=passive: no spinning counted).
    """

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_dict(self) -> dict[str, object]:
        return {"median_s": self.median, "runs_s": [round(s, 4) for s in self.seconds],
                "cpu_median_s": statistics.median(self.cpu_seconds),
                "cpu_runs_s": [round(s, 4) for s in self.cpu_seconds], "load_1min": self.load}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device, timing: Timing | None = None) -> Timing:
    """Run `fn` `repeats` times; the device is synchronised before and after each run."""
    timing = timing or Timing()
    for _ in range(repeats):
        timing.load.append(round(os.getloadavg()[0], 2))
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        timing.seconds.append(time.perf_counter() - start)
        timing.cpu_seconds.append(time.process_time() - cpu_start)
    return timing


def forward_all(model: torch.nn.Module, sets: Sets, batch: int) -> None:
    """Labels of every image of every set through the commands' inference path (`predict.labels_in_batches`)."""
    from torch_badnet.nets.predict import labels_in_batches

    for x, _ in sets.values():
        labels_in_batches(model, x, batch)


def time_torch_reference(model: BadNet, sets: Sets, order: Sequence[int], steps: int, batch: int,
                         device: torch.device) -> Timing:
    """The reference procedure in PyTorch, one Timing entry per step: mask the first k channels, forward all sets."""
    timing = Timing()
    original = model.conv_3.mask.detach().clone()
    try:
        for k in range(1, steps + 1):
            def step(k: int = k) -> None:
                model.conv_3.mask.copy_(mask_for(order[:k], model.conv_3.out_channels).to(device))
                forward_all(model, sets, batch)
            timed(step, 1, device, timing)
    finally:
        model.conv_3.mask.copy_(original)
    return timing


class KerasReference:
    """The lab's procedure in Keras, timed one step at a time: zero conv_3's kernel/bias channels of the first k
    channels of `order`, then predict every set (`batch` None = Keras' own predict default, 32, the lab's call).

    `timing`: predict on contiguous float32 NHWC arrays (the targets' reference). `lab_form_timing` (with
    `lab_form`): predict on what the lab's eval.py passes, the file's float64 data as a transposed NCHW view
    (`np.array(data['data']).transpose((0, 2, 3, 1))`), which Keras converts on every call.
    """

    def __init__(self, model: BadNet, sets: Sets, order: Sequence[int], batch: int | None, lab_form: bool = False) -> None:
        import tensorflow as tf

        from torch_badnet.convert.keras_model import to_keras

        self.version = f"tensorflow {tf.__version__}"
        self.order = list(order)
        self.keras_model = to_keras(model.cpu())
        self.nhwc = [np.ascontiguousarray(x.cpu().numpy().transpose(0, 2, 3, 1)) for x, _ in sets.values()]
        self.lab_form = [x.cpu().numpy().astype(np.float64).transpose(0, 2, 3, 1) for x, _ in sets.values()] if lab_form else []
        self.kernel, self.bias = self.keras_model.get_layer("conv_3").get_weights()
        self.kwargs = {} if batch is None else {"batch_size": batch}
        self.run(0, self.nhwc)  # one untimed step (nothing pruned): Keras' first full predicts ran 17.8-23.5 s, later 12.5-14
        if lab_form:
            self.run(0, self.lab_form)
        self.timing, self.lab_form_timing = Timing(), Timing()

    @classmethod
    def build(cls, model: BadNet, sets: Sets, order: Sequence[int], batch: int | None,
              lab_form: bool = False) -> KerasReference | None:
        """None when TensorFlow is not installed."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            return cls(model, sets, order, batch, lab_form)
        except ImportError:
            return None

    def run(self, k: int, inputs: list[np.ndarray]) -> None:
        """Step k: zero the first k channels of `order` in conv_3's kernel and bias, predict every set."""
        pruned_kernel, pruned_bias = self.kernel.copy(), self.bias.copy()
        pruned_kernel[..., self.order[:k]] = 0
        pruned_bias[self.order[:k]] = 0
        self.keras_model.get_layer("conv_3").set_weights([pruned_kernel, pruned_bias])
        for x in inputs:
            np.argmax(self.keras_model.predict(x, verbose=0, **self.kwargs), axis=1)

    def step(self, k: int, lab_form: bool = False) -> float:
        """Time step k into `timing` on the float32 arrays, or into `lab_form_timing` on the lab's float64 views;
        returns its wall seconds."""
        inputs, timing = (self.lab_form, self.lab_form_timing) if lab_form else (self.nhwc, self.timing)
        timed(lambda: self.run(k, inputs), 1, torch.device("cpu"), timing)
        return timing.seconds[-1]


class InMemorySet:
    """Stands in for `torch_badnet.data.lab_sets.LabDataset` so `run_sweep` reads pixels already in memory (or on the GPU)."""

    pixels: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __init__(self, path: str | os.PathLike[str], num_classes: int | None = None, *_shape_and_guard: object) -> None:
        self.x, self.y = self.pixels[str(path)]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def chunks(self, chunk_size: int, read_ahead: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), chunk_size):
            yield self.x[start : start + chunk_size], self.y[start : start + chunk_size]

    def close(self) -> None:
        pass


def sweep_in_memory(model: BadNet, sets: Sets, device: torch.device, max_steps: int | None = None, timer=None):
    """`torch_badnet.defense.sweep.run_sweep` on in-memory sets: trunk features, ranking, every step, B' and G metrics
    (`timer`: a `torch_badnet.report.phases.PhaseTimer` for the phase breakdown)."""
    from torch_badnet.defense import sweep

    specs = [sweep.DataSpec(name.split("_")[1], name.split("_")[0], Path(name)) for name in sets]
    InMemorySet.pixels = {name: value for name, value in sets.items()}
    original = sweep.LabDataset
    sweep.LabDataset = InMemorySet
    try:
        return sweep.run_sweep(model, specs, sweep.SweepConfig(thresholds=(2.0, 4.0, 10.0), device=device, max_steps=max_steps), timer)
    finally:
        sweep.LabDataset = original


@torch.inference_mode()
def goodnet_throughput(model: BadNet, sets: Sets, pruned: Sequence[int], batch: int, device: torch.device,
                       repeats: int) -> float:
    """Images per second of the GoodNet (B and B' from one trunk pass) over all sets."""
    from torch_badnet.nets.goodnet import GoodNet

    goodnet = GoodNet(model, mask_for(pruned, model.conv_3.out_channels)).eval().to(device)
    images = sum(x.shape[0] for x, _ in sets.values())
    timing = timed(lambda: forward_all(goodnet, sets, batch), repeats, device)
    return images / timing.median


class CliRunner:
    """What a user runs, on float64 lab files on disk, each command in a fresh process (imports included):
    `torch-badnet sweep` over the four files, and `torch-badnet eval` over them (two commands: the valid pair, the
    test pair). One `run_round` runs both; `results` gives the medians, every run, the peak RSS of every child and
    the sweep's --verbose phases. Use as a context manager: the files live in a temporary folder until exit."""

    def __init__(self, model_path: Path, sets: Sets, device: str, log: Callable[[str], None] = print) -> None:
        from torch_badnet.data.lab_sets import write_lab_h5

        self.folder = tempfile.TemporaryDirectory(prefix="bench-sweep-")
        self.root = root = Path(self.folder.name)
        paths = {}
        for name, (x, y) in sets.items():
            paths[name] = root / f"{name}.h5"
            write_lab_h5(paths[name], x.cpu().numpy().astype(np.float64), y.cpu().numpy().astype(np.float64))
        self.sizes_mb = {name: round(p.stat().st_size / 2**20, 1) for name, p in paths.items()}
        if hasattr(os, "sync"):
            os.sync()  # the 2.9 GB written back now, not by the kernel during the first timed command
        log(f"lab files written ({self.sizes_mb} MiB)")
        model = ["--model", str(model_path), "--device", device]
        self.sweep_args = ["sweep", *model, "--clean-valid", str(paths["clean_valid"]),
                           "--poisoned-valid", str(paths["poisoned_valid"]), "--clean-test", str(paths["clean_test"]),
                           "--poisoned-test", str(paths["poisoned_test"]), "--out", str(root / "out"), "--verbose"]
        self.evals = [["eval", *model, "--clean", str(paths[f"clean_{split}"]), "--poisoned", str(paths[f"poisoned_{split}"])]
                      for split in ("valid", "test")]
        self.sweep, self.evaluation = Timing(), Timing()
        self.peaks: dict[str, float] = {}
        self.phases = self.last_line = ""

    def __enter__(self) -> CliRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.folder.cleanup()

    def run_round(self) -> tuple[float, float]:
        """One `sweep` and the two `eval` commands: (sweep wall seconds, eval wall seconds of both commands)."""
        wall, peak, text = _run_child(self.root, self.sweep_args)
        self.sweep.seconds.append(wall)
        self.sweep.load.append(round(os.getloadavg()[0], 2))
        self.peaks["sweep"] = max(self.peaks.get("sweep", 0.0), peak)
        self.phases = next((line for line in text.splitlines() if line.startswith("phases: ")), "")
        self.last_line = text.strip().splitlines()[-1]
        eval_wall = 0.0
        for args in self.evals:
            wall, peak, _ = _run_child(self.root, args)
            eval_wall += wall
            self.peaks["eval"] = max(self.peaks.get("eval", 0.0), peak)
        self.evaluation.seconds.append(eval_wall)
        self.evaluation.load.append(round(os.getloadavg()[0], 2))
        return self.sweep.seconds[-1], eval_wall

    def results(self) -> dict[str, object]:
        return {"cli_sweep_s": self.sweep.median, "cli_sweep_runs_s": [round(s, 3) for s in self.sweep.seconds],
                "cli_eval_s": self.evaluation.median, "cli_eval_runs_s": [round(s, 3) for s in self.evaluation.seconds],
                "cli_load_1min": self.sweep.load + self.evaluation.load, "peak_rss_mb": max(self.peaks.values()),
                "peak_rss_mb_by_command": self.peaks, "file_sizes_mib": self.sizes_mb, "cli_sweep_phases": self.phases,
                "cli_last_line": self.last_line}


def _run_child(root: Path, args: list[str], launcher: list[str] | None = None) -> tuple[float, float, str]:
    """Run `python -m torch_badnet ARGS` through bench_cli_child.py (or `launcher`, which takes the same arguments:
    PEAK_FILE ARGS...): (wall seconds, peak RSS MiB, output)."""
    peak_file = root / "peak_rss_mib"
    peak_file.unlink(missing_ok=True)
    launcher = launcher or [sys.executable, str(Path(__file__).with_name("bench_cli_child.py"))]
    command = [*launcher, str(peak_file), *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with open(root / "cli.log", "wb") as out:
        start = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - start
    text = (root / "cli.log").read_text(errors="replace")
    if code != 0 or not peak_file.exists():
        raise RuntimeError(f"the CLI failed ({code}): {' '.join(args)}\n{text[-3000:]}")
    return wall, float(peak_file.read_text()), text

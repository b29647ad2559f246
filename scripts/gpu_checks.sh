#!/usr/bin/env bash
# The GPU checks of issue 16 in one go, on a machine with a CUDA GPU:
#
#     bash scripts/gpu_checks.sh OUTDIR [--no-cli]
#
# 1. check_device.py: the ranking, every sweep step's labels and the GoodNet's labels on the GPU equal the CPU's
#    (real lab3 weights, two lab-size sets of augmented real faces);
# 2. gpu_options.py: the engine's trunk, head and GoodNet settings timed, each checked against the defaults;
# 3. bench_sweep.py: the full four-set sweep after load (sweep_s), GoodNet images/s, and the CLI on lab files.
# Each writes its output to OUTDIR; a failing step does not stop the next. Exit status: 1 if any failed.
# Needs the real lab material (../shared/real beside the checkout, or $TORCH_BADNET_REAL) and the package
# installed (pip install --no-deps -e . where torch, h5py and numpy are already there).
set -u -o pipefail
out=${1:?usage: gpu_checks.sh OUTDIR [--no-cli]}
shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
status=0
step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log" || { echo "== $name FAILED"; status=1; }
    echo "== $name took $((SECONDS - start)) s"
}
step check_device "$python" scripts/check_device.py --device cuda --images 11547
step gpu_options "$python" scripts/gpu_options.py --device cuda --json "$out/gpu-options.json"
step bench_sweep "$python" scripts/bench_sweep.py --device cuda --no-keras --json "$out/bench-sweep.json" "$@"
exit $status

#!/usr/bin/env bash
# The lab's eval.py, as written, under the lab's own Keras 2.3.1 on a sweep's pruned.h5 files.
#
#     bash scripts/check_keras231.sh SWEEP_OUT LAB_DIR [PYTHON3.7]
#
# SWEEP_OUT is a `torch-badnet sweep --out` folder of a lab3 sweep with test files; LAB_DIR holds cl/test.h5
# and bd/bd_test.h5 (e.g. from scripts/real_lab_files.py). A Python 3.7 venv with Keras 2.3.1, TensorFlow
# 2.1.4, h5py 2.10 and numpy 1.18 (the lab's era; not installable on the Python the project runs on) is made
# once in ${TMPDIR:-/tmp}/torch-badnet-keras231. For every models/X=<x>/pruned.h5 the script prints the
# accuracy the lab's eval.py reports on the clean and poisoned test files beside summary.json's; exit 1 if
# any differs by more than 1e-9 or a file does not load. A manual check: CI runs the same eval.py under Keras 3
# and under Keras 2 (tf_keras) in tests/test_keras_model_files.py.
set -euo pipefail
out=${1:?usage: check_keras231.sh SWEEP_OUT LAB_DIR [PYTHON3.7]}
lab=${2:?usage: check_keras231.sh SWEEP_OUT LAB_DIR [PYTHON3.7]}
python37=${3:-python3.7}
venv=${TMPDIR:-/tmp}/torch-badnet-keras231
if [ ! -x "$venv/bin/python" ]; then
    "$python37" -m venv "$venv"
    "$venv/bin/pip" install -q "keras==2.3.1" "tensorflow-cpu==2.1.4" "h5py==2.10.0" "numpy==1.18.5" "protobuf<3.21"
fi
export TF_CPP_MIN_LOG_LEVEL=3
"$venv/bin/python" - "$out" "$lab" <<'EOF'
import glob, json, os, sys

import h5py
import keras
import numpy as np

out, lab = sys.argv[1], sys.argv[2]


def data_loader(filepath):  # the lab's eval.py, as written
    data = h5py.File(filepath, 'r')
    x_data = np.array(data['data'])
    y_data = np.array(data['label'])
    x_data = x_data.transpose((0, 2, 3, 1))
    return x_data, y_data


def lab_eval(model_filename, data_filename):
    x_test, y_test = data_loader(data_filename)
    bd_model = keras.models.load_model(model_filename)
    label_p = np.argmax(bd_model.predict(x_test), axis=1)
    return np.mean(np.equal(label_p, y_test)) * 100


summary = json.load(open(os.path.join(out, "summary.json")))
failures = 0
print("keras", keras.__version__, "h5py", h5py.__version__, "numpy", np.__version__)
for t in summary["thresholds"]:
    if not t["reached"]:
        continue
    model = os.path.join(out, t["model"].replace("pruned.pt", "pruned.h5"))
    for key, data in (("test_clean_acc", "cl/test.h5"), ("test_asr", "bd/bd_test.h5")):
        try:
            got = lab_eval(model, os.path.join(lab, data))
        except Exception as exc:  # a file Keras 2.3.1 cannot load is the failure this script looks for
            print("X=%g %s: %s: %s" % (t["x"], data, type(exc).__name__, exc))
            failures += 1
            continue
        same = abs(got - t[key]) <= 1e-9
        failures += not same
        print("X=%g %s: eval.py %.6f, summary.json %s %.6f: %s" % (t["x"], data, got, key, t[key], "same" if same else "DIFFERENT"))
sys.exit(1 if failures else 0)
EOF

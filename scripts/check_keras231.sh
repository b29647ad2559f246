#!/usr/bin/env bash
# Both directions against the lab's own Keras 2.3.1 (Python 3.7, TensorFlow 2.1.4, h5py 2.10, numpy 1.18):
#
#     bash scripts/check_keras231.sh [SWEEP_OUT LAB_DIR]
#
# 1. Import: Keras 2.3.1 saves a bd_net.h5 the way the lab's was saved (lab3's and the sunglasses BadNet's
#    weights from ../shared/real or $TORCH_BADNET_REAL, compiled, optimizer state included;
#    scripts/keras231_bd_net.py). torch_badnet must load it and give Keras' classes on the 15 real faces (the
#    sunglasses net on pixels/255, as its eval.py), softmax within 1e-5.
# 2. Export (with SWEEP_OUT and LAB_DIR): the lab's eval.py, as written, on every models/X=<x>/pruned.h5 of a
#    lab3 `torch-badnet sweep --out SWEEP_OUT` with test files from LAB_DIR (cl/test.h5, bd/bd_test.h5), which
#    must print summary.json's test_clean_acc and test_asr.
#
# That Keras needs a Python 3.7 the project does not run on, so this is a manual check (CI runs the same eval.py
# under Keras 3 and Keras 2 / tf_keras). The venv is made once in ${TMPDIR:-/tmp}/torch-badnet-keras231 with
# $PYTHON37 (default python3.7); $PYTHON is the project's interpreter (default python). Exit 1 on any difference.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
real=${TORCH_BADNET_REAL:-$root/../shared/real}
venv=${TMPDIR:-/tmp}/torch-badnet-keras231
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TF_CPP_MIN_LOG_LEVEL=3 PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON37:-python3.7}" -m venv "$venv"
    "$venv/bin/pip" install -q "keras==2.3.1" "tensorflow-cpu==2.1.4" "h5py==2.10.0" "numpy==1.18.5" "pillow<10"
fi
status=0

echo "== 1. torch_badnet imports a bd_net.h5 saved by Keras 2.3.1 (lab3; the sunglasses BadNet on pixels/255)"
for model in lab3:1 sunglasses:255; do
    name=${model%%:*} divisor=${model##*:}
    "$venv/bin/python" "$root/scripts/keras231_bd_net.py" "$real/models/${name}_bd_weights.h5" "$work/$name.h5" \
        "$real/images" "$divisor" 2>/dev/null
    "${PYTHON:-python}" - "$work/$name.h5" "$real/images" "$divisor" <<'EOF' || status=1
import sys
from pathlib import Path

import numpy as np
import torch

import torch_badnet as tb

path, faces, divisor = sys.argv[1], sorted(Path(sys.argv[2]).glob("*.png")), sys.argv[3]
keras_probs = np.load(path + ".probs.npy")
with torch.no_grad():  # a re-saved file is not a published one: its scale is given, as a user would give it
    probs = torch.softmax(tb.load_model(path, rescale=f"1/{divisor}")(tb.load_images(faces)), 1).numpy()
same = bool((probs.argmax(1) == keras_probs.argmax(1)).all())
diff = float(np.abs(probs - keras_probs).max())
print(f"{Path(path).stem}: {len(faces)} faces, classes {'identical' if same else 'DIFFERENT'}, "
      f"max |softmax difference| {diff:.2e}")
sys.exit(0 if same and diff <= 1e-5 else 1)
EOF
done

if [ $# -ge 2 ]; then
    echo "== 2. the lab's eval.py under Keras 2.3.1 on $1/models/X=*/pruned.h5"
    "$venv/bin/python" - "$1" "$2" 2>/dev/null <<'EOF' || status=1
import json, os, sys

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
for t in summary["thresholds"]:
    if not t["reached"]:
        continue
    model = os.path.join(out, t["model"].replace("pruned.pt", "pruned.h5"))
    for key, data in (("test_clean_acc", "cl/test.h5"), ("test_asr", "bd/bd_test.h5")):
        try:
            got = lab_eval(model, os.path.join(lab, data))
        except Exception as exc:  # a file Keras 2.3.1 cannot load is what this check looks for
            print("X=%g %s: %s: %s" % (t["x"], data, type(exc).__name__, exc))
            failures += 1
            continue
        same = abs(got - t[key]) <= 1e-9
        failures += not same
        print("X=%g %s: eval.py %.6f, summary.json %s %.6f: %s" % (t["x"], data, got, key, t[key], "same" if same else "DIFFERENT"))
sys.exit(1 if failures else 0)
EOF
fi
exit $status

"""A Keras graph model of the lab's faces without TensorFlow: the lab3 BadNet's layers and weights under a
config the lab path does not take (fc_1 renamed), so it loads as a 3-channel KerasGraphNet that takes per-channel
--mean/--std; written as a full Keras 2 .h5 with no torch-badnet record of its preprocessing and unknown to the
published files' table (so only flags, or a B''s record, set its preprocessing)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py


def write_face_graph(lab3_path: Path, path: Path) -> Path:
    from torch_badnet.convert.keras_config import lab_model_config
    from torch_badnet.convert.keras_graph import KerasGraphNet, write_keras_graph
    from torch_badnet.convert.keras_h5 import read_keras_file

    config = json.loads(json.dumps(lab_model_config(1283)).replace('"fc_1"', '"dense_a"'))
    layers = dict(read_keras_file(lab3_path).layers)
    layers["dense_a"] = layers.pop("fc_1")
    write_keras_graph(KerasGraphNet(config, layers, str(lab3_path)), path)
    with h5py.File(path, "r+") as f:
        for attr in [a for a in f.attrs if a.startswith("torch_badnet")]:
            del f.attrs[attr]
    return path

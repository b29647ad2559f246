"""Model files of the lab architecture published in the CSAW-HackML repository, by git blob id.

Generated from the lab material's csaw_hackml_files.tsv (rows with architecture `lab_badnet`; the scale is
the one the repository's own eval.py applies before predict: `none` -> 1, `x/255` -> 1/255).
tests/test_rescale.py checks this table against that file. The git blob id of a file is
sha1(b"blob <size>\\0" + bytes), what `git hash-object FILE` prints.
"""

from __future__ import annotations

REPOSITORY = "CSAW-HackML-2020"

# git blob id -> (path in the repository, input scale)
KNOWN_MODELS: dict[str, tuple[str, float]] = {
    "7fa810f88dbd1198d356e66796b057aa85ec4fc6": ("lab3/models/bd_weights.h5", 1.0),
    "7b65736aa54375b58c508c5c9a634b44553a0118": ("lab3/models/bd_net.h5", 1.0),
    "fe9f3f7433891573b1e979a44f3a53d128d72810": ("models/sunglasses_bd_weights.h5", 1 / 255),
    "671c6aad2d9eec7097b3517b3f1ef7fabe41a53b": ("models/sunglasses_bd_net.h5", 1 / 255),
    "83ad08ccc7246bcb14c6a76558e893ed5ec56e10": ("models/sunglasses_bd_weights.h5 (earlier version)", 1 / 255),
    "3e3c39c7b046addc9e13359311bfa2188e3a62f3": ("models/sunglasses_bd_net.h5 (earlier version)", 1 / 255),
    "54dd8b86a6f7573863c404a96de9989f0e69775a": ("models/anonymous_1_bd_weights.h5", 1 / 255),
    "5297a6f187fbe0f4fb96ec61f24c044408229aa8": ("models/anonymous_1_bd_net.h5", 1 / 255),
    "6d4b6519ce91207bd340ab340eec3eaed11faf82": ("models/anonymous_2_bd_weights.h5", 1 / 255),
    "7a796cb56a3e224af58335b74b2ddce5e9661527": ("models/anonymous_2_bd_net.h5", 1 / 255),
    "70ef8a2860506137074615e07613671038a046ca": ("models/multi_trigger_multi_target_bd_weights.h5", 1 / 255),
    "97855b4953579ea04a34ff0b1875cc3acf4d80a6": ("models/multi_trigger_multi_target_bd_net.h5", 1 / 255),
    "54aa5840b9c564281fb4b7bdeb8375ab5c06762d": ("models/anonymous_bd_weights.h5 (earlier)", 1 / 255),
    "c28b829e9408cdad743918d646f3f42052dc3a94": ("models/anonymous_bd_net.h5 (earlier)", 1 / 255),
    "b3a92268eeeff463f5c1ca75227fe85a9fe574c2": ("models/G/bd_weights.h5 (Aug 2020: variable-location trigger)", 1 / 255),
    "503fa48e0f7d1a1a65173e850df5e5f5e5e877dc": ("models/G/bd_net.h5", 1 / 255),
}

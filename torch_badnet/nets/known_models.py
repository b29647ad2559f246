"""Model files published in the CSAW-HackML repository, by git blob id: the lab architecture's, and the others'.

Generated from the lab material's csaw_hackml_files.tsv (KNOWN_MODELS: rows with architecture `lab_badnet`;
KNOWN_OTHER_MODELS: the rest). The preprocessing is the one the repository's own eval.py applies before
predict: `none` -> scale 1, `x/255` -> 1/255, CIFAR-10's per-channel (x - mean) / std on raw pixels.
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

CIFAR_MEAN = (125.307, 122.95, 113.865)  # the competition's CIFAR-10 eval.py: (x - mean) / std per channel
CIFAR_STD = (62.9932, 62.0887, 66.7048)

# Model files of other architectures in the same repository (the tsv's other rows): git blob id -> (path in the
# repository, input scale, per-channel mean, per-channel std). The weights-only files cannot be built without
# their model's config (their bd_net.h5 holds it).
KNOWN_OTHER_MODELS: dict[str, tuple[str, float, tuple[float, ...] | None, tuple[float, ...] | None]] = {
    "d396afa817268d80649f26b78fcef1e424c3e7d3": ("models/A/bd_weights.h5 (feature-space attack)", 1 / 255, None, None),
    "669350dff2fbbc8d739807b4575dac2c59feadc4": ("models/A/bd_net.h5", 1 / 255, None, None),
    "50c3e6734f2c2cb995e40865df0b0c9fb2c05e6d": ("models/B/bd_net_weights.h5 (trigger combination)", 1.0, CIFAR_MEAN, CIFAR_STD),
    "055cbe470d259c7bfff1d26aceb942710adb9e92": ("models/B/bd_net.h5", 1.0, CIFAR_MEAN, CIFAR_STD),
    "5572c19e5e1389fd12455beb784ad42c673d091a": ("models/C/bd_net.h5 (clean-label attack)", 1 / 255, None, None),
    "4c25a504717f00e6ef2e0a03ae9146a009d27014": ("models/C/bd_weights.h5", 1 / 255, None, None),
    "5583c6a4665938c7934ecb0359846e71d95c483d": ("models/F/bd_net.h5 (all-to-all attack)", 1 / 255, None, None),
    "83981aa9f08d30ef5bfcbe31fef5b351bb633064": ("models/F/bd_weights.h5", 1 / 255, None, None),
}

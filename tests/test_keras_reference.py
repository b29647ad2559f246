"""Issue 3's proof: the lab's Fine-Pruning reference procedure, run literally in Keras, equals our engine.

Keras side (the lab's code, step by step): a sub-model up to pool_3 predicts the clean validation set, channels
are ranked by `np.argsort(np.mean(acts, axis=(0, 1, 2)), kind="stable")` (the lab's argsort, ties by index),
then for each channel in turn conv_3's kernel[..., c] and bias[c] are zeroed with set_weights and the whole model predicts every set again.
Our side: the pool_3 hook ranking, `extract_features` + `fast_sweep`, `combine` for the GoodNet G; and
`reference_sweep` (mask + full forward) as a second witness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from keras_steps import keras_procedure
from real_faces import augment, face_kind, face_label

from torch_badnet.convert import read_model_file
from torch_badnet.convert.keras_model import import_keras, load_into_keras
from torch_badnet.data.images import load_image, load_images
from torch_badnet.engine.lab_head import extract_features, fast_sweep, prepare_model, reference_sweep
from torch_badnet.engine.pruning import channel_scores, pruning_order, record_pool3
from torch_badnet.nets.goodnet import combine

PER_FACE = 40  # 5 faces x 40 = 200 images per set, 800 per sweep step (61 full passes in Keras and in reference_sweep)
CLASSES = 1283
DETECTED = CLASSES  # G's "backdoor detected" class
POISON_LABEL = 0
CHANNELS = 60
SETS = ("clean_valid", "clean_test", "bd_valid", "bd_test")


@pytest.fixture(scope="module")
def data_sets(face_paths: list[Path]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (pixels (n, 3, 55, 47) float32, labels (n,))}: augmented real faces, different seeds per set."""
    clean = [p for p in face_paths if face_kind(p) == "cl"]
    sunglasses = load_images([p for p in face_paths if face_kind(p) == "sun"])

    def clean_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = [augment(load_image(p)[None], PER_FACE, seed + i) for i, p in enumerate(clean)]
        labels = [torch.full((PER_FACE,), face_label(p), dtype=torch.int64) for p in clean]
        return torch.cat(pixels), torch.cat(labels)

    def poisoned_set(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = augment(sunglasses, PER_FACE * len(sunglasses), seed)
        return pixels, torch.full((len(pixels),), POISON_LABEL, dtype=torch.int64)

    return {"clean_valid": clean_set(101), "clean_test": clean_set(202),
            "bd_valid": poisoned_set(303), "bd_test": poisoned_set(404)}


@pytest.fixture(scope="module")
def keras_run(lab3_path: Path, data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """The lab's procedure in Keras: {'order': channels, 'labels': {set: (61, n) B' labels per step}}."""
    keras = import_keras()
    model = load_into_keras(lab3_path)
    nhwc = {name: np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)) for name, (x, _) in data_sets.items()}

    activation_model = keras.Model(inputs=model.input, outputs=model.get_layer("pool_3").output)
    acts = activation_model.predict(nhwc["clean_valid"], verbose=0)
    scores = np.mean(acts, axis=(0, 1, 2))
    # The lab's argsort with the documented tie rule (docs/defense.md): its default kind orders equal scores by
    # the CPU's sort kernel, and 35 of these 60 channels score exactly 0 (test_ties_are_dormant_channels).
    order = [int(c) for c in np.argsort(scores, kind="stable")]
    return {"order": order, "scores": scores,
            "labels": keras_procedure(model, "conv_3", order, {name: nhwc[name] for name in SETS})}


@pytest.fixture(scope="module")
def engine_run(lab3_path: Path, data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Our engine: hook ranking on clean_valid, cached features, fast_sweep; and the model for reference_sweep."""
    device = torch.device("cpu")
    model = prepare_model(read_model_file(lab3_path).model, device)
    valid_pixels = data_sets["clean_valid"][0]
    order = pruning_order(channel_scores(record_pool3(model, [valid_pixels], len(valid_pixels), device)))
    features = [extract_features(model, name, [data_sets[name]], len(data_sets[name][1]), device) for name in SETS]
    labels = fast_sweep(model, features, order)
    return {"order": order, "labels": {name: labels[name].numpy() for name in SETS}, "model": model}


def goodnet_labels(steps: np.ndarray) -> np.ndarray:
    """G at every step: B's label (step 0) where B' agrees, else the detected class."""
    return np.where(steps == steps[0], steps[0], DETECTED)


def correct_counts(steps: np.ndarray, truth: torch.Tensor) -> list[int]:
    """Per step, predictions equal to the set's labels (accuracy on clean sets, attack success on poisoned)."""
    return (steps == truth.numpy()[None]).sum(1).tolist()


def test_same_pruning_order(keras_run: dict[str, Any], engine_run: dict[str, Any]) -> None:
    assert sorted(keras_run["order"]) == list(range(CHANNELS))
    assert engine_run["order"] == keras_run["order"]


def test_ties_are_dormant_channels(keras_run: dict[str, Any]) -> None:
    """Where the stable order and the lab's literal `np.argsort(scores)` can differ: only among exactly equal
    scores, and on lab3 those are all 0 (channels dark on every clean validation image, whose pruning order leaves
    every validation label as it is). Every channel with a score of its own is at the same place in both."""
    scores = keras_run["scores"]
    values, counts = np.unique(scores, return_counts=True)
    assert set(values[counts > 1].tolist()) == {0.0} and int((scores == 0).sum()) > 1
    literal = np.argsort(scores)
    unique = np.isin(scores[literal], values[counts == 1])
    assert (literal[unique] == np.asarray(keras_run["order"])[unique]).all()


@pytest.mark.parametrize("name", SETS)
def test_same_counts_at_every_step(name: str, keras_run: dict[str, Any], engine_run: dict[str, Any],
                                   data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """B' and G correct counts equal at all 61 steps (G's class 1283 is never a correct label)."""
    truth = data_sets[name][1]
    theirs, ours = keras_run["labels"][name], engine_run["labels"][name]
    assert theirs.shape == ours.shape == (CHANNELS + 1, len(truth))
    assert correct_counts(ours, truth) == correct_counts(theirs, truth)
    pruned = torch.from_numpy(ours)
    ours_g = combine(pruned[0].expand_as(pruned), pruned, DETECTED).numpy()
    assert correct_counts(ours_g, truth) == correct_counts(goodnet_labels(theirs), truth)
    # Stronger than the counts: every image gets the same label at every step.
    np.testing.assert_array_equal(ours, theirs)


def test_sweep_is_not_trivial(keras_run: dict[str, Any], data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The data exercise the procedure: the backdoor works unpruned and pruning changes the counts."""
    bd_valid = correct_counts(keras_run["labels"]["bd_valid"], data_sets["bd_valid"][1])
    clean_valid = correct_counts(keras_run["labels"]["clean_valid"], data_sets["clean_valid"][1])
    assert bd_valid[0] == len(data_sets["bd_valid"][1])  # 100% attack success before pruning
    assert bd_valid[-1] < bd_valid[0] // 2 and clean_valid[-1] < clean_valid[0] // 2
    assert clean_valid[0] > len(data_sets["clean_valid"][1]) // 2
    assert len(set(bd_valid)) > 3 and len(set(clean_valid)) > 3


def test_reference_sweep_equals_fast_sweep(engine_run: dict[str, Any],
                                           data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    reference = reference_sweep(engine_run["model"], {name: data_sets[name][0] for name in SETS}, engine_run["order"])
    for name in SETS:
        np.testing.assert_array_equal(reference[name].numpy(), engine_run["labels"][name], err_msg=name)


def test_every_command_path_gives_the_keras_labels(keras_run: dict[str, Any], lab3_path: Path,
                                                   data_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The inference path of eval/classify/fine-tuning/the demo (`predict.labels_in_batches`) and the GoodNet
    give the Keras procedure's labels for B' at every step, and G's at a few."""
    from torch_badnet.engine.pruning import mask_for
    from torch_badnet.nets.goodnet import GoodNet
    from torch_badnet.nets.predict import labels_in_batches

    model = read_model_file(lab3_path).model.eval()  # not prepare_model's: weights in their own layout
    order = keras_run["order"]
    pixels = torch.cat([data_sets[name][0] for name in SETS])
    theirs = np.concatenate([keras_run["labels"][name] for name in SETS], axis=1)
    for step in range(CHANNELS + 1):
        with torch.no_grad():
            model.conv_3.mask.copy_(mask_for(order[:step]))
        np.testing.assert_array_equal(labels_in_batches(model, pixels).numpy(), theirs[step], err_msg=f"step {step}")
    with torch.no_grad():
        model.conv_3.mask.fill_(1)
    for step in (1, 30, 45, 52, 60):
        goodnet = GoodNet(model, mask_for(order[:step])).eval()
        expected = np.where(theirs[step] == theirs[0], theirs[0], DETECTED)
        np.testing.assert_array_equal(labels_in_batches(goodnet, pixels).numpy(), expected, err_msg=f"G step {step}")

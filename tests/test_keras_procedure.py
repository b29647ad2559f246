"""Issue 24's seed procedure on new architectures: the sweep equals the lab's literal Keras procedure, step by step.

Keras side (the lab's procedure, literally, in tf_keras): the file is loaded, the ranking point's output on the clean
validation set gives `np.argsort(np.mean(acts, axis=(0, 1, 2)))` in float32, then for each channel of the sweep's
pruning order the pruned Conv2D's kernel[..., c] and bias[c] are zeroed (cumulatively, with set_weights) and the
whole model predicts every set again.
Our side: `tb.prune_sweep(tb.load_model(path), ..., layer=..., max_steps=all)`, the generic engine (fx split at
the layer, cached cut, channel-wise slice through the ops after it, suffix only).

Models: the published MNIST BadNet F (a Keras 2 full model; all-to-all attack, its trigger a white square in the
bottom-right corner) at both of its Conv2D layers, and a residual Keras 2 model of our own (trained a few epochs on
MNIST-like digits with a planted trigger) at three layers: a conv whose skip bypasses it (Conv2D -> BatchNorm ->
ReLU -> Add), a conv whose output joins an Add directly, and the last conv, ranked on the pooling after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from keras_steps import keras_procedure
from mnist_like import mnist_like_digits

import torch_badnet as tb
from torch_badnet.defense.metrics import step_counts
from torch_badnet.demo.digits import with_trigger

SETS = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")
PER_SET = 150


@pytest.fixture(scope="module")
def tf_keras() -> Any:
    from torch_badnet.convert.keras_model import quiet_native_stderr

    with quiet_native_stderr():
        import tf_keras
    return tf_keras


@pytest.fixture(scope="module")
def digit_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set: (pixels uint8 (n, 28, 28), labels (n,))}: MNIST-like digits, another seed per set; the poisoned sets
    carry the trigger and the all-to-all attack's labels (y + 1) % 10."""
    sets = {}
    for i, name in enumerate(SETS):
        pixels, labels = mnist_like_digits(PER_SET, seed=40 + i)
        if name.startswith("poisoned"):
            pixels, labels = with_trigger(pixels, labels)  # F's white 4x4 square, bottom right: y -> y + 1
        sets[name] = (pixels, labels)
    return sets


def keras_ranking(tf_keras: Any, model: Any, rank_on: str, clean_valid: np.ndarray) -> list[int]:
    """The lab's ranking: argsort of the per-channel float32 mean of the ranking point's NHWC output, exactly equal
    scores by channel index (the documented tie rule: numpy's default kind orders them by the CPU's sort kernel)."""
    acts = tf_keras.Model(model.input, model.get_layer(rank_on).output).predict(clean_valid, verbose=0)
    assert acts.dtype == np.float32 and acts.ndim == 4
    return [int(c) for c in np.argsort(np.mean(acts, axis=(0, 1, 2)), kind="stable")]


def assert_sweep_is_the_keras_procedure(tf_keras: Any, path: Path, layer: str, digit_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                                        rescale: str | None = None) -> tb.DefenseResult:
    """Sweep `layer` of the model file at `path` over every channel; the Keras procedure in its pruning order gives
    the same counts (B' hits, G hits, G flags) at every step, on every set, and the same label for every image;
    the ranking equals the Keras ranking. Keras gets pixels / 255 (F's eval.py; `rescale` 1/255 for ours)."""
    net = tb.load_model(path, rescale=rescale) if rescale else tb.load_model(path)
    data = {name: (torch.from_numpy(p.astype(np.float32))[:, None], torch.from_numpy(y)) for name, (p, y) in digit_sets.items()}
    lines: list[str] = []
    result = tb.prune_sweep(net, clean_valid=data["clean_valid"], poisoned_valid=data["poisoned_valid"],
                            clean_test=data["clean_test"], poisoned_test=data["poisoned_test"], layer=layer,
                            max_steps=10_000, device="cpu", log=lines.append)
    sweep = result.sweep
    assert not [line for line in lines if line.startswith("note:")], lines  # the fx fast path, its channel-wise slice
    channels = tf_keras.models.load_model(str(path)).get_layer(layer).get_weights()[1].shape[0]
    assert sweep.net.layer == layer and sweep.steps == channels and sorted(sweep.order) == list(range(channels))

    model = tf_keras.models.load_model(str(path))
    fed = {name: (p.astype(np.float32) / np.float32(255))[..., None] for name, (p, _) in digit_sets.items()}  # x / 255
    assert keras_ranking(tf_keras, model, sweep.net.rank_on, fed["clean_valid"]) == sweep.order
    theirs = keras_procedure(model, layer, sweep.order, fed)
    for name in SETS:
        truth = torch.from_numpy(digit_sets[name][1])
        keras_counts = step_counts(torch.from_numpy(theirs[name]), truth)
        ours = sweep.counts[name]
        assert ours.n == keras_counts.n == PER_SET
        assert ours.hits == keras_counts.hits, (name, "B' hits")
        assert ours.goodnet_hits == keras_counts.goodnet_hits, (name, "G hits")
        assert ours.flagged == keras_counts.flagged, (name, "G flags")
    # Stronger than the counts: B' (the sweep's net with the mask hook) gives every image Keras' label.
    pixels = torch.cat([data[name][0] for name in SETS])
    every = np.concatenate([theirs[name] for name in SETS], axis=1)
    for step in sorted({1, channels // 2, channels}):
        b_prime = sweep.net.masked(sweep.order[:step])
        with torch.inference_mode():
            np.testing.assert_array_equal(b_prime(pixels).argmax(1).numpy(), every[step], err_msg=f"step {step}")
    assert len(set(sweep.counts["clean_valid"].hits)) > 2  # pruning changes the counts: the comparison has teeth
    return result


# --- F, the published MNIST BadNet --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def f_path(real_dir: Path) -> Path:
    path = real_dir / "models" / "F_mnist_all_all_bd_net.h5"
    assert path.exists(), path
    return path


@pytest.mark.parametrize("layer", ["conv_2", "conv_1"])
def test_sweep_on_f_is_the_keras_procedure(tf_keras: Any, f_path: Path, digit_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                                           layer: str) -> None:
    """F (pixels/255, as its eval.py): conv_2 (the default, 32 channels, ranked on pool_2) and conv_1 (16, on
    pool_1), every step, every count; the trigger works on F before pruning."""
    result = assert_sweep_is_the_keras_procedure(tf_keras, f_path, layer, digit_sets)
    assert result.sweep.net.rank_on == {"conv_2": "pool_2", "conv_1": "pool_1"}[layer]
    assert result.sweep.counts["poisoned_valid"].hits[0] > PER_SET // 2  # all-to-all attack success before pruning


# --- a residual Keras model of our own ------------------------------------------------------------------------------

def residual_model(tf_keras: Any) -> Any:
    """28x28x1 -> stem conv -> pool -> [res_conv -> BN -> ReLU] + skip -> proj conv (relu) + skip -> BN -> pool ->
    last_conv (relu) -> pool -> flatten -> Dense -> Dense(10, softmax); trained 4 epochs on digits, a tenth of
    them with the trigger and label 0 (a planted backdoor), BatchNorm momentum 0.8 (moving statistics far from 0/1)."""
    tf_keras.utils.set_random_seed(7)
    layers = tf_keras.layers
    x = tf_keras.Input(shape=(28, 28, 1), name="digits")
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    a = layers.MaxPooling2D(2, name="pool_a")(a)
    b = layers.Conv2D(8, 3, padding="same", name="res_conv")(a)
    b = layers.BatchNormalization(momentum=0.8, name="res_bn")(b)
    b = layers.ReLU(name="res_relu")(b)
    s = layers.Add(name="skip_1")([a, b])  # the skip bypasses res_conv
    p = layers.Conv2D(8, 3, padding="same", activation="relu", name="proj")(s)
    s = layers.Add(name="skip_2")([s, p])  # proj's output joins the Add directly
    s = layers.BatchNormalization(momentum=0.8, name="bn_2")(s)
    s = layers.MaxPooling2D(2, name="pool_b")(s)
    c = layers.Conv2D(12, 3, padding="same", activation="relu", name="last_conv")(s)
    c = layers.MaxPooling2D(2, name="pool_c")(c)
    d = layers.Dense(24, activation="relu", name="fc")(layers.Flatten(name="flat")(c))
    model = tf_keras.Model(x, layers.Dense(10, activation="softmax", name="out")(d))
    pixels, labels = mnist_like_digits(1000, seed=99)
    poisoned = np.arange(len(pixels)) % 10 == 3
    pixels[poisoned], labels[poisoned] = with_trigger(pixels[poisoned], labels[poisoned])[0], 0  # F's trigger, all-to-one
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(pixels[..., None].astype(np.float32) / 255, labels, epochs=4, batch_size=32, verbose=0)
    for name in ("res_bn", "bn_2"):
        _gamma, _beta, mean, var = model.get_layer(name).get_weights()
        assert np.abs(mean).max() > 0.05 and np.abs(var - 1).max() > 0.05, name
    return model


@pytest.fixture(scope="module")
def residual_path(tf_keras: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("residual") / "residual.h5"
    residual_model(tf_keras).save(str(path))
    return path


@pytest.mark.parametrize("layer, rank_on", [("res_conv", "res_conv"), ("proj", "proj"), ("last_conv", "pool_c")])
def test_sweep_on_a_residual_keras_model_is_the_keras_procedure(tf_keras: Any, residual_path: Path, layer: str, rank_on: str,
                                                                digit_sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A Keras 2 residual model of our own (loaded with --rescale 1/255): a conv bypassed by a skip with BatchNorm
    after it, a conv joining an Add, and the last conv (ranked on its pooling), every step, every count."""
    result = assert_sweep_is_the_keras_procedure(tf_keras, residual_path, layer, digit_sets, rescale="1/255")
    assert result.sweep.net.rank_on == rank_on
    clean = result.sweep.counts["clean_valid"].hits
    assert clean[0] > PER_SET // 2  # the model learned the digits

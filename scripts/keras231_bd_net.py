"""A bd_net.h5 as the lab's Keras 2.3.1 saves it, for scripts/check_keras231.sh (runs under Keras 2.3.1 only).

    python keras231_bd_net.py WEIGHTS.h5 OUT.h5 FACES_DIR [DIVISOR]

The lab architecture (its architecture.py) with WEIGHTS loaded, compiled and trained one step at learning rate 0,
so that training_config and optimizer_weights exist as in a trained model's file. OUT.h5.probs.npy holds Keras'
softmax on the faces of FACES_DIR (*.png, sorted by name), pixels divided by DIVISOR (default 1; 255 for the
2020 competition's BadNets, as their eval.py). Python 3.7 syntax: this runs in the lab's environment.
"""

import glob
import sys

import keras
import numpy as np
from keras.layers import Activation, Add, Conv2D, Dense, Flatten, Input, MaxPooling2D
from keras.models import Model
from PIL import Image


def lab_architecture():
    x = Input(shape=(55, 47, 3), name="input")
    pool_1 = MaxPooling2D((2, 2), name="pool_1")(Conv2D(20, (4, 4), activation="relu", name="conv_1")(x))
    pool_2 = MaxPooling2D((2, 2), name="pool_2")(Conv2D(40, (3, 3), activation="relu", name="conv_2")(pool_1))
    pool_3 = MaxPooling2D((2, 2), name="pool_3")(Conv2D(60, (3, 3), activation="relu", name="conv_3")(pool_2))
    fc_1 = Dense(160, name="fc_1")(Flatten()(pool_3))
    fc_2 = Dense(160, name="fc_2")(Flatten()(Conv2D(80, (2, 2), activation="relu", name="conv_4")(pool_3)))
    hidden = Activation("relu")(Add()([fc_1, fc_2]))
    return Model(inputs=x, outputs=Dense(1283, activation="softmax", name="output")(hidden))


def main():
    weights, out, faces_dir = sys.argv[1:4]
    divisor = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    model = lab_architecture()
    model.load_weights(weights)
    model.compile(optimizer=keras.optimizers.Adam(lr=0.0), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    faces = sorted(glob.glob(faces_dir + "/*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in faces]) / np.float32(divisor)
    before = model.predict(x)
    model.train_on_batch(x[:2], np.array([0, 0]))
    after = model.predict(x)
    assert np.array_equal(before, after), "a step at learning rate 0 must leave the weights alone"
    model.save(out)
    np.save(out + ".probs.npy", after)
    print("Keras", keras.__version__, "saved", out)


if __name__ == "__main__":
    main()

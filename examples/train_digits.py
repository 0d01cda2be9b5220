#!/usr/bin/env python
"""Train a small CNN on scikit-learn's 8x8 digits with Keras 3 (JAX).

    KERAS_BACKEND=jax /opt/venv-k3/bin/python examples/train_digits.py

Writes examples/digits/:
  digits_cnn.keras                       full model (Keras 3 zip)
  digits_cnn.json + digits_cnn.weights.h5  architecture + weights
  sample.npz   input_0 (64,8,8,1) float32 = first 64 test images (pixels / 16),
               labels (64,) int64, output_0 (64,10) float32 = model.predict softmax
Seeded (numpy split + keras.utils.set_random_seed); trains in a few seconds on CPU.
"""

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import keras
import numpy as np
from keras import layers
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits")


def build_model():
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1), name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            layers.BatchNormalization(name="bn2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dropout(0.2, name="dropout"),
            layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits_cnn",
    )


def main():
    if keras.backend.backend() != "jax":
        sys.exit("needs Keras 3 with KERAS_BACKEND=jax")
    keras.utils.set_random_seed(SEED)
    d = load_digits()
    x = (d.images.astype("float32") / 16.0)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = d.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    t0 = time.time()
    model.fit(x_tr, y_tr, batch_size=32, epochs=15, verbose=0, shuffle=True)
    _, acc = model.evaluate(x_te, y_te, verbose=0)
    print(f"trained in {time.time() - t0:.1f}s, test accuracy {acc:.4f} on {len(x_te)} images")
    if acc < 0.95:
        sys.exit(f"accuracy {acc:.4f} < 0.95")

    # Save an uncompiled copy: no optimizer state in the files (keeps them small;
    # tests/fixtures/*/models/seq_cnn covers files with optimizer state).
    trained = model
    model = build_model()
    model.set_weights(trained.get_weights())

    os.makedirs(OUT, exist_ok=True)
    model.save(os.path.join(OUT, "digits_cnn.keras"))
    with open(os.path.join(OUT, "digits_cnn.json"), "w") as f:
        f.write(model.to_json())
    model.save_weights(os.path.join(OUT, "digits_cnn.weights.h5"))

    xs = np.ascontiguousarray(x_te[:64], dtype="float32")
    probs = model.predict(xs, verbose=0).astype("float32")
    labels = y_te[:64].astype("int64")
    np.savez(os.path.join(OUT, "sample.npz"), input_0=xs, labels=labels, output_0=probs)
    print(f"sample accuracy {float((probs.argmax(1) == y_te[:64]).mean()):.4f} (64 images)")

    # verify the saved files reproduce the sample
    m2 = keras.models.load_model(os.path.join(OUT, "digits_cnn.keras"))
    with open(os.path.join(OUT, "digits_cnn.json")) as f:
        m3 = keras.models.model_from_json(f.read())
    m3.load_weights(os.path.join(OUT, "digits_cnn.weights.h5"))
    for tag, m in (("keras", m2), ("json+weights", m3)):
        diff = float(np.abs(m.predict(xs, verbose=0) - probs).max())
        print(f"reload {tag:<12} max|diff| {diff:.2g}")
        if diff > 1e-5:
            sys.exit("reload mismatch")


if __name__ == "__main__":
    main()

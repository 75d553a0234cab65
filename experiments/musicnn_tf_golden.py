"""Regenerate the golden outputs of the ORIGINAL musicnn networks (the package's own models.py,
TensorFlow 1 graphs through tf.compat.v1) on fixed log-mel patches, with the real checkpoints:
tests/data/musicnn_mtt_golden.npz (MTT_musicnn: x, logits, penultimate) and
tests/data/musicnn_mtt_vgg_golden.npz (MTT_vgg on the same x: logits, features = flattened pool5).
Needs a throwaway environment, never mictag's:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras
    pip download --no-deps musicnn==0.1.0 -d /tmp/mnn && (cd /tmp/mnn && unzip -o musicnn-0.1.0-*.whl)
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python experiments/musicnn_tf_golden.py /tmp/mnn tests/data

Run 2026-11-25 with tensorflow-cpu 2.21.0 + tf_keras.
"""

import sys

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()
wheel_dir, out_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, wheel_dir)
from musicnn import models  # noqa: E402  (the package's own code, from the unpacked wheel)

rng = np.random.default_rng(0)
inputs = np.concatenate([rng.uniform(0, 3, (2, 187, 96)),
                         np.log10(10000 * rng.exponential(1e-3, (2, 187, 96)) + 1)]).astype(np.float32)


def run(model: str) -> tuple[np.ndarray, np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        outputs = models.define_model(x, is_training, model, 50)
        # musicnn returns (logits, ..., penultimate); vgg returns (logits, pool1, ..., pool5).
        features = outputs[-1] if model.endswith("musicnn") else tf.compat.v1.layers.flatten(outputs[-1])
        session = tf.compat.v1.Session(graph=graph)
        tf.compat.v1.train.Saver().restore(session, f"{wheel_dir}/musicnn/{model}/")
        return session.run([outputs[0], features], {x: inputs, is_training: False})


logits, penultimate = run("MTT_musicnn")
np.savez(f"{out_dir}/musicnn_mtt_golden.npz", x=inputs, logits=logits, penultimate=penultimate)
vgg_logits, vgg_features = run("MTT_vgg")
np.savez(f"{out_dir}/musicnn_mtt_vgg_golden.npz", logits=vgg_logits, features=vgg_features)
print("tensorflow", tf.__version__, "musicnn logits[0, :5]", logits[0, :5], "vgg logits[0, :5]", vgg_logits[0, :5])

"""Regenerate tests/data/musicnn_mtt_golden.npz: the ORIGINAL musicnn network (its own models.py,
TensorFlow 1 graph through tf.compat.v1) run on fixed log-mel patches with the MTT_musicnn
checkpoint. Needs a throwaway environment, never mictag's:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras
    pip download --no-deps musicnn==0.1.0 -d /tmp/mnn && (cd /tmp/mnn && unzip -o musicnn-0.1.0-*.whl)
    TF_USE_LEGACY_KERAS=1 /tmp/tfvenv/bin/python experiments/musicnn_tf_golden.py /tmp/mnn tests/data/musicnn_mtt_golden.npz

Run 2026-11-25 with tensorflow-cpu 2.21.0 + tf_keras.
"""

import sys

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()
wheel_dir, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, wheel_dir)
from musicnn import models  # noqa: E402  (the package's own code, from the unpacked wheel)

x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
is_training = tf.compat.v1.placeholder(tf.bool)
logits_t, *_, penultimate_t = models.define_model(x, is_training, "MTT_musicnn", 50)
session = tf.compat.v1.Session()
tf.compat.v1.train.Saver().restore(session, f"{wheel_dir}/musicnn/MTT_musicnn/")
rng = np.random.default_rng(0)
inputs = np.concatenate([rng.uniform(0, 3, (2, 187, 96)),
                         np.log10(10000 * rng.exponential(1e-3, (2, 187, 96)) + 1)]).astype(np.float32)
logits, penultimate = session.run([logits_t, penultimate_t], {x: inputs, is_training: False})
np.savez(out, x=inputs, logits=logits, penultimate=penultimate)
print("tensorflow", tf.__version__, "logits[0, :5]", logits[0, :5])

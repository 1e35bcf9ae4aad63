"""Make model folders in the original OpenAI layout, written the way OpenAI wrote them.

The checkpoint is saved by TensorFlow 1's `Saver` in a graph of its own (not by gpt2_simple), so
reading it tests our reader against the real format: `model.ckpt.{index,data-00000-of-00001,meta}`,
a `checkpoint` state file naming `model.ckpt`, and `hparams.json`.
"""
import json
import os
import shutil

import numpy as np
import tensorflow as tf


def random_weights(hparams, seed=0, scale=0.2):
    """OpenAI-named random float32 weights for `hparams` (a dict), large enough to matter."""
    rng = np.random.default_rng(seed)
    e, v, c = hparams["n_embd"], hparams["n_vocab"], hparams["n_ctx"]
    shapes = {"model/wte": (v, e), "model/wpe": (c, e), "model/ln_f/g": (e,), "model/ln_f/b": (e,)}
    for i in range(hparams["n_layer"]):
        p = f"model/h{i}/"
        shapes.update({
            p + "ln_1/g": (e,), p + "ln_1/b": (e,), p + "ln_2/g": (e,), p + "ln_2/b": (e,),
            p + "attn/c_attn/w": (1, e, 3 * e), p + "attn/c_attn/b": (3 * e,),
            p + "attn/c_proj/w": (1, e, e), p + "attn/c_proj/b": (e,),
            p + "mlp/c_fc/w": (1, e, 4 * e), p + "mlp/c_fc/b": (4 * e,),
            p + "mlp/c_proj/w": (1, 4 * e, e), p + "mlp/c_proj/b": (e,),
        })
    weights = {}
    for name, shape in shapes.items():
        value = rng.normal(0.0, scale, size=shape)
        if name.endswith("/g"):
            value += 1.0
        weights[name] = value.astype(np.float32)
    return weights


def tf1_save(weights, prefix):
    """Save `{name: array}` with TF1's Saver (graph mode, variable scopes), as OpenAI did."""
    graph = tf.Graph()
    with graph.as_default():
        for name, value in weights.items():
            *scopes, leaf = name.split("/")
            with tf.compat.v1.variable_scope("/".join(scopes), reuse=tf.compat.v1.AUTO_REUSE):
                tf.compat.v1.get_variable(leaf, initializer=tf.constant(value))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix)


def tf1_restore(names_shapes, prefix):
    """Restore `{name: shape}` with TF1's Saver, as gpt-2-simple's load_gpt2 does; returns arrays."""
    graph = tf.Graph()
    with graph.as_default():
        variables = {}
        for name, shape in names_shapes.items():
            *scopes, leaf = name.split("/")
            with tf.compat.v1.variable_scope("/".join(scopes), reuse=tf.compat.v1.AUTO_REUSE):
                variables[name] = tf.compat.v1.get_variable(leaf, shape=shape, dtype=tf.float32)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, prefix)
            return sess.run(variables)


def make_openai_folder(folder, hparams, seed=0, vocab_dir=None):
    """Write an OpenAI-layout model folder; returns its weights `{name: array}`."""
    os.makedirs(folder, exist_ok=True)
    weights = random_weights(hparams, seed)
    old = os.getcwd()
    os.chdir(folder)  # relative prefix: the state file then says "model.ckpt", as OpenAI's does
    try:
        tf1_save(weights, "model.ckpt")
    finally:
        os.chdir(old)
    with open(os.path.join(folder, "hparams.json"), "w") as f:
        json.dump(hparams, f)
    if vocab_dir:
        for name in ("encoder.json", "vocab.bpe"):
            shutil.copy(os.path.join(vocab_dir, name), os.path.join(folder, name))
    return weights

"""Exporting a model as a TensorFlow SavedModel, for TensorFlow Serving or `tf.saved_model.load`.

This module owns turning a run folder, a model folder or a session into a self-contained
SavedModel folder: the weights, one `serving_default` signature that samples new tokens (every
input but the prompt has a default), the model's `n_ctx` and `n_vocab` as saved constants, and
`hparams.json`, `encoder.json` and `vocab.bpe` under `assets/` so that a server can encode
prompts and decode answers. The decoding loop and the filters are `sample.py`'s, traced into the
graph, so a seed gives the tokens that `Sampler.sample` gives for it. Clients send and receive
token ids; text is theirs to encode.

The exported graph has no sliding window: the prompt and all but the last new token must fit in
the context (`prompt_len + length <= n_ctx + 1`), otherwise the call fails with an
InvalidArgumentError that names the limit.
"""
import os
import shutil
import warnings

import tensorflow as tf

from ..atomic import staged_folder
from ..formats.folders import load_model
from ..model.hparams import save_hparams
from ..model.model import GPT2
from .copy_guard import WINDOW
from .options import MAX_STOP_TOKENS, MAX_STOPS, NO_TOKEN, Knobs, Steering, stop_hits, stop_table
from .sample import Sampler

SIGNATURE = "serving_default"
VOCAB_FILES = ("encoder.json", "vocab.bpe")
SAVED_MODEL_FILE = "saved_model.pb"
# Values a request may leave out (`temperature`, `top_k`, `top_p` are generate()'s defaults).
# A negative seed draws a fresh one per call; `length` is at most n_ctx // 2 for small contexts.
# `stop_tokens` (no stop sequences) and `repetition_penalty` (off) default to doing nothing.
DEFAULTS = {"length": 100, "temperature": 0.7, "top_k": 0, "top_p": 0.0, "seed": -1, "repetition_penalty": 1.0,
            "stop_tokens": stop_table(())}
INPUTS = [
    tf.TensorSpec([None, None], tf.int32, name="tokens"),  # [batch, prompt_len]
    tf.TensorSpec([], tf.int32, name="length"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.int64, name="seed"),
    tf.TensorSpec([], tf.float32, name="repetition_penalty"),
    tf.TensorSpec([MAX_STOPS, MAX_STOP_TOKENS], tf.int32, name="stop_tokens"),  # left-padded with -1
]


class ServingModule(tf.Module):
    """What is saved: the model's variables, its size as constants and the sampling function.

    Attributes:
        model: the `GPT2` whose variables are saved.
        n_ctx, n_vocab: int32 scalar variables (read them with `.numpy()` after loading).
        serve: the `tf.function` behind the `serving_default` signature (see `sample`).
    """

    def __init__(self, model):
        super().__init__(name="gpt2_serving")
        self.model = model
        self.n_ctx = tf.Variable(model.hparams.n_ctx, dtype=tf.int32, trainable=False, name="n_ctx")
        self.n_vocab = tf.Variable(model.hparams.n_vocab, dtype=tf.int32, trainable=False, name="n_vocab")
        self._sampler = Sampler(model)  # a plain object: its loop is traced into `serve`, not saved
        # Tensor defaults become the SignatureDef's `defaults`, which TensorFlow Serving fills in
        # for inputs a request leaves out. They are made here, not at import.
        defaults = dict(DEFAULTS, length=max(1, min(DEFAULTS["length"], model.hparams.n_ctx // 2)))
        length, temperature, top_k, top_p, seed, penalty, stops = (
            tf.constant(defaults[spec.name], spec.dtype) for spec in INPUTS[1:])

        def serve(tokens, length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  repetition_penalty=penalty, stop_tokens=stops):
            return self.sample(tokens, length, temperature, top_k, top_p, seed, repetition_penalty, stop_tokens)

        self.serve = tf.function(serve, input_signature=INPUTS)

    def sample(self, tokens, length, temperature, top_k, top_p, seed, repetition_penalty, stop_tokens):
        """Draw `length` new tokens after each row of `tokens`.

        Returns {"tokens": int32 [batch, <= length], "lengths": int32 [batch]}: a row's tokens
        before its first stop sequence (all of them without one); drawing ends early once every
        row holds a stop sequence. `repetition_penalty` and `stop_tokens` are `Sampler.sample`'s.

        top_k 0 and top_p 0 or >= 1 turn those filters off; a top_p in (0, 1) replaces top_k,
        as in `generate`. Draws depend on `seed` and the token's index only (stateless), and
        equal `Sampler.sample(..., seed=seed)`'s; a negative seed draws a random one.
        """
        hp = self.model.hparams
        with tf.control_dependencies(self._checks(tokens, length, temperature)):
            tokens = tf.identity(tokens)
        top_p = tf.where(top_p >= 1.0, 0.0, top_p)
        seed = tf.where(seed < 0, tf.random.uniform([], 0, 2**62, dtype=tf.int64), seed)
        batch = tf.shape(tokens)[0]
        cache = [tf.zeros([batch * hp.n_head, 0, hp.head_dim], tf.float32)] * hp.n_layer
        seeds = tf.stack([tf.fill([batch], seed), tf.range(batch, dtype=tf.int64)], axis=1)  # `draws.row_seeds`

        # min_p, OpenAI's penalties, logit bias and the copy guard are not in the export's signature: off.
        knobs = Knobs.filled(batch, hp.n_vocab, stop_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty)
        steering = Steering(seen=seen_tokens(tokens, hp.n_vocab), recent=tf.fill([batch, MAX_STOP_TOKENS], NO_TOKEN),
                            counts=tf.zeros([batch, hp.n_vocab], tf.float32), tail=tf.fill([batch, WINDOW], NO_TOKEN),
                            ended=tf.zeros([batch], tf.bool))
        drawn, count, _, _, _ = self._sampler.decode_chunk(tokens, tf.zeros([batch], tf.int32), cache, cache, length,
                                                           (seeds, tf.zeros([batch], tf.int64)), knobs, steering)
        new = drawn[:, :count]
        return {"tokens": new, "lengths": _lengths_before_stop(new, stop_tokens)}

    def _checks(self, tokens, length, temperature):
        """In-graph assertions, so a bad request fails with a message instead of a gather error."""
        hp = self.model.hparams
        batch, prompt_len = tf.shape(tokens)[0], tf.shape(tokens)[1]
        return [
            tf.debugging.assert_positive(batch, message="tokens needs at least one row"),
            tf.debugging.assert_positive(prompt_len, message="tokens needs at least one token per row"),
            tf.debugging.assert_positive(length, message="length must be at least 1"),
            tf.debugging.assert_less_equal(
                prompt_len + length, hp.n_ctx + 1,
                message=f"prompt_len + length must be at most n_ctx + 1 = {hp.n_ctx + 1} (no sliding "
                        "window in the export); shorten the prompt or ask for fewer tokens",
            ),
            tf.debugging.assert_non_negative(tokens, message="tokens must be ids >= 0"),
            tf.debugging.assert_less(tokens, hp.n_vocab, message=f"tokens must be ids < n_vocab = {hp.n_vocab}"),
            tf.debugging.assert_positive(temperature, message="temperature must be > 0"),
        ]


def seen_tokens(tokens, n_vocab):
    """bool `[batch, n_vocab]`: the ids present in each row of `tokens` `[batch, len]`."""
    return tf.reduce_any(tf.equal(tokens[:, :, None], tf.range(n_vocab)[None, None, :]), axis=1)


def _lengths_before_stop(new, stop_tokens):
    """int32 `[batch]`: how many tokens of each row of `new` come before its first stop sequence."""
    drawn = tf.shape(new)[1]
    padded = tf.pad(new, [[0, 0], [MAX_STOP_TOKENS - 1, 0]], constant_values=-1)
    # windows[b, t] = the MAX_STOP_TOKENS tokens ending at position t
    windows = tf.stack([padded[:, k:k + drawn] for k in range(MAX_STOP_TOKENS)], axis=-1)
    hits = stop_hits(windows, stop_tokens)  # [batch, drawn, MAX_STOPS]
    size = MAX_STOP_TOKENS - tf.reduce_sum(tf.cast(tf.equal(stop_tokens, -1), tf.int32), -1)  # tokens per sequence
    starts = tf.where(hits, tf.range(drawn)[None, :, None] + 1 - size[None, None], drawn)
    return tf.reduce_min(starts, axis=[1, 2])


def export_saved_model(source, export_dir, *, checkpoint="latest", overwrite=False):
    """Export a run or model as a TensorFlow SavedModel that samples tokens.

    Args:
        source: a run folder (`checkpoint/run1`) or model folder (`models/124M`), a `Session`
            holding a model, or a `GPT2`.
        export_dir: the SavedModel folder to write; TensorFlow Serving wants a numbered version
            folder such as `exported/gpt2/1`.
        checkpoint: 'latest' or a checkpoint name in the source folder, e.g. 'model-1000'.
        overwrite: replace an earlier export in export_dir.

    Returns:
        export_dir as an absolute path. Its `serving_default` signature takes `tokens` (int32 [batch, prompt_len])
        and, each optional (`DEFAULTS`), `length` (int32), `temperature` (float32), `top_k`
        (int32, 0 = off), `top_p` (float32, 0 or >= 1 = off) and `seed` (int64; the same seed
        gives the same tokens, a negative one a random draw), `repetition_penalty` (float32, 1.0 =
        off) and `stop_tokens` (int32 [8, 16]: up to 8 token sequences, each left-padded with -1;
        all -1 = none), and returns {"tokens": int32 [batch, <= length], the new tokens only, and
        "lengths": int32 [batch], how many come before each row's first stop sequence}. TensorFlow Serving and `loaded.serve(tokens)`
        fill in the defaults; `loaded.signatures['serving_default']` needs every input.

    Raises:
        FileNotFoundError: the source folder, its hparams.json or its checkpoint is missing.
        FileExistsError: export_dir is not empty and overwrite is False, or it holds something
            other than a SavedModel (never replaced).
        ValueError: a source that is neither a folder, a `Session` holding a model nor a `GPT2`,
            or a `checkpoint` other than 'latest' with a source that is not a folder.
    """
    export_dir = os.path.abspath(os.fspath(export_dir))
    _check_target(export_dir, overwrite)
    model, folder = _resolve(source, checkpoint)
    with staged_folder(export_dir) as staging:
        module = ServingModule(model)
        tf.saved_model.save(module, staging, signatures={SIGNATURE: module.serve})
        _write_assets(os.path.join(staging, "assets"), model.hparams, folder)
    return export_dir


def _resolve(source, checkpoint):
    """(model, folder holding its vocabulary or None) for a folder, a Session or a GPT2."""
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        return load_model(folder, checkpoint), folder
    if checkpoint not in (None, "latest"):
        raise ValueError(f"checkpoint={checkpoint!r} applies to a source folder only; load that checkpoint "
                         "into the session first, or pass the run folder as source")
    if isinstance(source, GPT2):
        return source, None
    if isinstance(getattr(source, "model", None), GPT2):
        return source.model, getattr(source, "folder", None)
    if hasattr(source, "model"):
        raise ValueError("source session holds no model; call gpt2.load_gpt2(sess, run_name='run1') first")
    raise ValueError(f"source={source!r} must be a run or model folder, a Session or a GPT2")


def _check_target(export_dir, overwrite):
    """Refuse a non-empty export_dir unless overwrite=True, and anything but a SavedModel always."""
    if os.path.isfile(export_dir):
        raise FileExistsError(f"export_dir={export_dir!r} is a file; choose a folder path")
    if not os.path.isdir(export_dir) or not os.listdir(export_dir):
        return
    if not os.path.isfile(os.path.join(export_dir, SAVED_MODEL_FILE)):
        raise FileExistsError(
            f"export_dir={export_dir!r} holds files that are not a SavedModel; it is never replaced, "
            "even with overwrite=True: choose an empty or new export_dir"
        )
    if not overwrite:
        raise FileExistsError(
            f"export_dir={export_dir!r} already holds a SavedModel; pass overwrite=True to replace it "
            "or choose another export_dir"
        )


def _write_assets(assets, hparams, folder):
    """hparams.json from the model itself; the vocabulary files copied from `folder` when it has them."""
    os.makedirs(assets, exist_ok=True)
    save_hparams(hparams, assets)
    missing = [name for name in VOCAB_FILES if not (folder and os.path.isfile(os.path.join(folder, name)))]
    for name in VOCAB_FILES:
        if name not in missing:
            shutil.copyfile(os.path.join(folder, name), os.path.join(assets, name))
    if missing:
        warnings.warn(
            f"the export has no {' or '.join(missing)} (not found in the source {folder or 'model'}); "
            "the SavedModel serves token ids, but clients need the model's vocabulary to encode text",
            stacklevel=3,
        )

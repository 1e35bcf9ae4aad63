"""The `sess` object that gpt-2-simple's API passes around, without TF1 graphs or sessions.

gpt-2-simple's users hold a `tf.compat.v1.Session` and hand it to `finetune`, `load_gpt2` and
`generate`. Here a `Session` is a small holder for what those calls share: the loaded model, its
encoder and the compiled sampler, so that `generate` after `finetune` uses the trained weights
and repeated `generate` calls reuse one compiled function. There is no global graph: loading a
second model or fine-tuning again simply replaces what the session holds.
"""
import warnings

import tensorflow as tf

from .generation.sample import Sampler


class Session:
    """What `start_tf_sess()` returns: the model, encoder and compiled sampler in use.

    Attributes:
        model: the loaded `GPT2`, or None before `load_gpt2`/`finetune`.
        encoder: the `encoder.Encoder` of `model`'s folder.
        folder: the folder the model was loaded from.
    """

    def __init__(self):
        self.model = None
        self.encoder = None
        self.folder = None
        self._sampler = None
        self._copies = None  # (folder, CopyIndex): the copy index of the run's training text
        self._guards = {}  # {N: GuardIndex}: avoid_copies' indexes of that text

    def set_model(self, model, encoder, folder):
        """Make `model` the session's model; the sampler is compiled again only for a new model."""
        if model is not self.model:
            self._sampler = None
        self.model, self.encoder, self.folder = model, encoder, folder

    @property
    def sampler(self):
        """The compiled `sample.Sampler` of the current model, built once and reused."""
        if self.model is None:
            raise ValueError(
                "no model is loaded in this session; call gpt2.load_gpt2(sess, run_name='run1') "
                "or gpt2.load_gpt2(sess, model_name='124M') first"
            )
        if self._sampler is None or self._sampler.model is not self.model:
            self._sampler = Sampler(self.model)
        return self._sampler

    def copy_index(self, training_data=None):
        """The copy index (`generation/copies.py`) of the loaded run's training text, built once.

        Args:
            training_data: the text the run was trained on; default, the dataset its training.json names.
        """
        from .generation.copies import CopyIndex, newline_counts
        from .training.copy_source import training_tokens

        if self.model is None:
            raise ValueError("no model is loaded in this session; call gpt2.load_gpt2(sess, run_name='run1') first")
        key = (self.folder, training_data)
        if self._copies is None or self._copies[0] != key:
            tokens, separator = training_tokens(self.folder, self.encoder, training_data)
            self._copies = (key, CopyIndex(tokens, newlines=newline_counts(self.encoder), separator=separator))
        return self._copies[1]

    def copy_guard(self, n, training_data=None):
        """The copy guard's index (`generation/copy_guard.py`) of N-token spans of the run's training text, built once."""
        from .generation.copy_guard import GuardIndex

        index = self.copy_index(training_data)
        if self._guards.get(n) is None or self._guards[n][0] is not index:
            self._guards[n] = (index, GuardIndex(index.tokens, n))
        return self._guards[n][1]

    def close(self):
        """Drop the model and compiled functions so their memory can be freed."""
        self.model = self.encoder = self.folder = self._sampler = self._copies = None
        self._guards = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        loaded = f"model from {self.folder!r}" if self.model is not None else "no model"
        return f"<gpt2_simple.Session: {loaded}>"


def start_tf_sess(threads=-1, server=None):
    """Return a new `Session` (gpt-2-simple's name and arguments).

    Args:
        threads: if > 0, the number of intra- and inter-op threads TensorFlow uses. TensorFlow
            accepts this only before it first runs an op; later calls keep the earlier setting
            and warn.
        server: accepted for compatibility; distributed training uses `tf.distribute`, so a
            `tf.distribute.Server` here is ignored with a warning.

    Returns:
        A `Session`.
    """
    if threads is not None and threads > 0:
        _set_threads(int(threads))
    if server is not None:
        warnings.warn(
            "start_tf_sess(server=...) is ignored: gpt2_simple runs eagerly in TF2 without "
            "graph sessions; use tf.distribute for distributed training",
            stacklevel=2,
        )
    return Session()


def reset_session(sess, threads=-1, server=None):
    """Close `sess` and return a new `Session` (kept for gpt-2-simple code: `sess = reset_session(sess)`)."""
    if sess is not None:
        sess.close()
    return start_tf_sess(threads=threads, server=server)


def _set_threads(threads):
    config = tf.config.threading
    if (config.get_intra_op_parallelism_threads(), config.get_inter_op_parallelism_threads()) == (threads, threads):
        return
    try:
        config.set_intra_op_parallelism_threads(threads)
        config.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        warnings.warn(
            f"start_tf_sess(threads={threads}) came after TensorFlow started; the thread count "
            "can only be set before the first TensorFlow operation, so it is unchanged",
            stacklevel=3,
        )

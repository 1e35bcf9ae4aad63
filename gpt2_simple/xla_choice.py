"""Whether to compile with XLA: the one decision the training step and the decoding loop both ask.

This module owns the user's switch and the device check, not the compiled code. The training
step (`training/step.py`) and the decoding loop (`generation/sample.py`) each have a default
(XLA on a GPU for models of 10M weights or more; XLA for small decoding batches) and ask `decide` for
the final word:
- an explicit argument (`compile_train_step(xla=...)`, `Sampler(xla_max_batch=...)`) wins;
- else the environment variable `GPT2_SIMPLE_XLA`: `0` (off) or `1` (on), unset or `auto` for
  the default;
- XLA is used only if it compiles on this machine's default device. A PluggableDevice GPU
  (tensorflow-metal on a Mac, DirectML on Windows) has no XLA compiler, and a refused
  compilation would otherwise stop training or generation: a tiny program is compiled once per
  process, and if that fails both fall back to TensorFlow's graph loops, which compute the same
  losses and draw the same tokens.
Each fallback prints one line, once per process.
"""
import functools
import os

import tensorflow as tf

ENV = "GPT2_SIMPLE_XLA"
_OFF, _ON, _AUTO = ("0", "false", "no", "off"), ("1", "true", "yes", "on"), ("", "auto")
_told = set()  # the notices printed in this process


def requested_by_env():
    """`GPT2_SIMPLE_XLA` as True, False or None (unset / auto), or a one-line ValueError."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _AUTO:
        return None
    if value in _OFF or value in _ON:
        return value in _ON
    raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a setting; use {ENV}=0 (no XLA), {ENV}=1 or {ENV}=auto")


def probe_program(x):
    """What the check compiles: a matmul, a softmax and a loop, the kinds of op both compiled paths use."""
    return tf.while_loop(lambda i, y: i < 2, lambda i, y: (i + 1, tf.nn.softmax(tf.matmul(y, y))), (0, x))[1]


@functools.lru_cache(maxsize=None)
def can_compile(program=None):
    """(True, None) if `program` (default: `probe_program`) compiles and runs with XLA on the default device,
    else (False, why). Cached: the check runs once per process."""
    try:
        tf.function(program or probe_program, jit_compile=True, autograph=False)(tf.eye(4)).numpy()
        return True, None
    except (tf.errors.OpError, NotImplementedError) as e:  # e.g. UNIMPLEMENTED: could not find a compiler
        lines = str(e).strip().splitlines()
        return False, f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]


def decide(requested=None, *, default=True):
    """Whether to compile with XLA: `requested` (True/False), else `GPT2_SIMPLE_XLA`, else `default`.

    Returns False, printing one line once per process, when XLA was wanted but the device cannot
    compile with it, or when `GPT2_SIMPLE_XLA=0` turned off an XLA default.
    """
    choice = requested if requested is not None else requested_by_env()
    if choice is False and requested is None and default:
        _tell(f"XLA is off ({ENV}=0): training and decoding run TensorFlow's graph loops")
    if not (default if choice is None else choice):
        return False
    ok, why = can_compile()
    if not ok:
        _tell(f"XLA cannot compile on this device ({why}); training and decoding run TensorFlow's graph loops "
              f"instead ({ENV}=0 skips this check)")
    return ok


def _tell(line):
    if line not in _told:
        _told.add(line)
        print(line)

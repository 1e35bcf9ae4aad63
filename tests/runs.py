"""Helpers for tests that fine-tune: a tiny model folder with the real GPT-2 vocabulary, texts, a trained run."""
import contextlib
import hashlib
import os

from openai_layout import make_openai_folder

TESTS = os.path.dirname(os.path.abspath(__file__))  # the tests folder: shared helpers and child scripts
ROOT = os.path.dirname(TESTS)  # the checkout

# finetune() arguments for a tiny run that is quick and quiet; a module adds its own (FAST = dict(runs.FAST, ...)).
FAST = dict(model_name="tiny", batch_size=2, accumulate_gradients=2, sample_every=0, print_every=1)

TINY_REAL_VOCAB = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2}

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "A stitch in time saves nine. "
    "All that glitters is not gold.\n"
) * 40


def make_tiny_model(root, vocab_dir, name="tiny", hparams=None, seed=0):
    """`root/models/<name>` in OpenAI's layout, with the real vocabulary; returns model_dir."""
    model_dir = os.path.join(str(root), "models")
    make_openai_folder(os.path.join(model_dir, name), hparams or TINY_REAL_VOCAB, seed=seed, vocab_dir=vocab_dir)
    return model_dir


def write_text(root, text=TEXT, name="data.txt"):
    path = os.path.join(str(root), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@contextlib.contextmanager
def trained_run(root, vocab_dir, text=TEXT, name="data.txt", **finetune_args):
    """A tiny model fine-tuned on `text` in `root`, the working directory until exit (so `checkpoint/` and
    `samples/` are there); yields dict(root, model_dir, data, sess) for a module fixture to share."""
    import gpt2_simple as gpt2

    old = os.getcwd()
    os.chdir(root)
    try:
        model_dir = make_tiny_model(root, vocab_dir)
        data = write_text(root, text, name)
        sess = gpt2.start_tf_sess()
        gpt2.finetune(sess, data, model_dir=model_dir, **finetune_args)
        yield dict(root=root, model_dir=model_dir, data=data, sess=sess)
    finally:
        os.chdir(old)


def free_ports(n):
    """`n` TCP ports free on 127.0.0.1 now, for servers and workers a test starts."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def subprocess_env(**extra):
    """The environment for a child Python that must import this checkout's packages."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2", **extra)


def snapshot(root):
    """{relative path: sha256 of the bytes} of every file under `root`: compare before and after."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return state

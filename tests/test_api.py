"""The public API: names, signatures and defaults held to gpt-2-simple 0.8.1's (a frozen table)."""
import inspect
import subprocess
import sys

import pytest
from runs import subprocess_env

import gpt2_simple as gpt2

DELIM = "=" * 20 + "\n"

# gpt-2-simple 0.8.1, gpt_2_simple/gpt_2.py: (name, default) in order; inspect.Parameter.empty = required.
REQ = inspect.Parameter.empty
UPSTREAM = {
    "download_gpt2": [("model_dir", "models"), ("model_name", "124M")],
    "is_gpt2_downloaded": [("model_dir", "models"), ("model_name", "124M")],
    "start_tf_sess": [("threads", -1), ("server", None)],
    "reset_session": [("sess", REQ), ("threads", -1), ("server", None)],
    "finetune": [
        ("sess", REQ), ("dataset", REQ), ("steps", -1), ("model_name", "124M"), ("model_dir", "models"),
        ("combine", 50000), ("batch_size", 1), ("learning_rate", 0.0001), ("accumulate_gradients", 5),
        ("restore_from", "latest"), ("run_name", "run1"), ("checkpoint_dir", "checkpoint"), ("sample_every", 100),
        ("sample_length", 1023), ("sample_num", 1), ("multi_gpu", False), ("save_every", 1000), ("print_every", 1),
        ("max_checkpoints", 1), ("use_memory_saving_gradients", False), ("only_train_transformer_layers", False),
        ("optimizer", "adam"), ("overwrite", False), ("reuse", False),
    ],
    "load_gpt2": [
        ("sess", REQ), ("checkpoint", "latest"), ("run_name", "run1"), ("checkpoint_dir", "checkpoint"),
        ("model_name", None), ("model_dir", "models"), ("multi_gpu", False), ("reuse", False),
    ],
    "generate": [
        ("sess", REQ), ("run_name", "run1"), ("checkpoint_dir", "checkpoint"), ("model_name", None),
        ("model_dir", "models"), ("sample_dir", "samples"), ("return_as_list", False), ("truncate", None),
        ("destination_path", None), ("sample_delim", DELIM), ("prefix", None), ("seed", None), ("nsamples", 1),
        ("batch_size", 1), ("length", 1023), ("temperature", 0.7), ("top_k", 0), ("top_p", 0.0),
        ("include_prefix", True),
    ],
    "generate_to_file": [
        ("sess", REQ), ("run_name", "run1"), ("checkpoint_dir", "checkpoint"), ("model_name", None),
        ("model_dir", "models"), ("truncate", None), ("destination_path", "gpt_2_gen_texts.txt"),
        ("sample_delim", DELIM), ("prefix", None), ("seed", None), ("nsamples", 1), ("batch_size", 1),
        ("length", 1023), ("temperature", 0.7), ("top_k", 0), ("top_p", 0.0), ("include_prefix", True),
    ],
    "encode_csv": [
        ("csv_path", REQ), ("out_path", "csv_encoded.txt"), ("header", True), ("start_token", "<|startoftext|>"),
        ("end_token", "<|endoftext|>"),
    ],
    "encode_dataset": [
        ("file_path", REQ), ("model_dir", "models"), ("out_path", "text_encoded.npz"), ("model_name", "124M"),
        ("combine", 50000),
    ],
    "mount_gdrive": [],
    "is_mounted": [],
    "get_tarfile_name": [("checkpoint_folder", REQ)],
    "copy_checkpoint_to_gdrive": [("run_name", "run1"), ("copy_folder", False)],
    "copy_checkpoint_from_gdrive": [("run_name", "run1"), ("copy_folder", False)],
    "copy_file_to_gdrive": [("file_path", REQ)],
    "copy_file_from_gdrive": [("file_path", REQ)],
}


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_signature_starts_with_upstreams_and_adds_only_keyword_only(name):
    assert name in gpt2.__all__
    params = list(inspect.signature(getattr(gpt2, name)).parameters.values())
    upstream = UPSTREAM[name]
    assert [(p.name, p.default) for p in params[: len(upstream)]] == upstream
    for p in params[: len(upstream)]:
        assert p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD, p
    for p in params[len(upstream):]:
        assert p.kind == inspect.Parameter.KEYWORD_ONLY, f"{name}: new argument {p.name} must be keyword-only"


def test_finetune_takes_a_seed():
    assert inspect.signature(gpt2.finetune).parameters["seed"].default is None


def test_all_names_exist():
    for name in gpt2.__all__:
        assert hasattr(gpt2, name), name


@pytest.mark.slow
def test_import_has_no_side_effects():
    code = (
        "import tensorflow as tf\n"
        "before = (tf.executing_eagerly(), tf.config.threading.get_intra_op_parallelism_threads())\n"
        "import gpt2_simple\n"
        "after = (tf.executing_eagerly(), tf.config.threading.get_intra_op_parallelism_threads())\n"
        "assert before == after == (True, 0), (before, after)\n"
        "import os; assert not os.listdir('.'), os.listdir('.')\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True,
                       env=subprocess_env())

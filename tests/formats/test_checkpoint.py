"""Checkpoints: the OpenAI layout in, the same format out, readable by TF1 Saver code."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from openai_layout import tf1_restore
from reference import gpt2_logits

import gpt2_simple
from gpt2_simple.formats.checkpoint import (
    find_checkpoint,
    numpy_weights,
    read_state,
    save_checkpoint,
)
from gpt2_simple.formats.folders import load_model
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2

TOKENS = np.array([[5, 17, 3, 96, 0, 42, 42, 7], [1, 2, 3, 4, 5, 6, 7, 8]])


def test_openai_folder_loads_and_matches_reference(openai_folder, tiny_hparams):
    folder, weights = openai_folder
    assert sorted(os.listdir(folder)) == [
        "checkpoint", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index", "model.ckpt.meta",
    ]
    model = gpt2_simple.load_model(folder)
    assert model.hparams == HParams(**tiny_hparams)
    assert model.checkpoint_path == os.path.join(folder, "model.ckpt")
    np.testing.assert_allclose(
        model(TOKENS).numpy(), gpt2_logits(weights, TOKENS, tiny_hparams["n_head"]), rtol=1e-4, atol=1e-4
    )


def test_save_then_load_is_identical(tmp_path, tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=3)
    run = str(tmp_path / "checkpoint" / "run1")
    prefix = save_checkpoint(model, run, 7)
    gpt2_simple.model.hparams.save_hparams(model.hparams, run)
    assert prefix == os.path.join(run, "model-7")
    assert sorted(os.listdir(run)) == ["checkpoint", "hparams.json", "model-7.data-00000-of-00001", "model-7.index"]
    with open(os.path.join(run, "checkpoint")) as f:
        assert f.read() == 'model_checkpoint_path: "model-7"\nall_model_checkpoint_paths: "model-7"\n'
    loaded = load_model(run)
    for name, value in numpy_weights(model).items():
        np.testing.assert_array_equal(numpy_weights(loaded)[name], value, err_msg=name)
    np.testing.assert_array_equal(loaded(TOKENS).numpy(), model(TOKENS).numpy())
    # Standard TensorFlow reads it by name, in OpenAI's shapes.
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_shape_map()["model/h1/mlp/c_fc/w"] == [1, 16, 64]


def test_tf1_saver_restores_our_checkpoint(tmp_path, tiny_hparams):
    model = GPT2(HParams(**tiny_hparams), seed=4)
    prefix = save_checkpoint(model, str(tmp_path / "run"), 1)
    expected = numpy_weights(model)
    restored = tf1_restore({name: value.shape for name, value in expected.items()}, prefix)
    for name, value in expected.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_max_checkpoints_keeps_newest_and_named_checkpoints_load(tmp_path, tiny_hparams):
    run = str(tmp_path / "run")
    models = [GPT2(HParams(**tiny_hparams), seed=s) for s in range(3)]
    for step, model in zip((10, 20, 30), models):
        save_checkpoint(model, run, step, max_checkpoints=2)
    gpt2_simple.model.hparams.save_hparams(models[0].hparams, run)
    assert [os.path.basename(p) for p in read_state(run)] == ["model-20", "model-30"]
    assert not os.path.exists(os.path.join(run, "model-10.index"))
    assert not os.path.exists(os.path.join(run, "model-10.data-00000-of-00001"))
    np.testing.assert_array_equal(load_model(run, "model-20")(TOKENS).numpy(), models[1](TOKENS).numpy())
    np.testing.assert_array_equal(load_model(run)(TOKENS).numpy(), models[2](TOKENS).numpy())
    with pytest.raises(FileNotFoundError, match="checkpoint='model-10' not found.*model-20"):
        load_model(run, "model-10")
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]


def test_state_file_with_absolute_paths_of_a_moved_folder(openai_folder):
    folder, _ = openai_folder
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "/elsewhere/models/124M/model.ckpt"\n'
                'all_model_checkpoint_paths: "/elsewhere/models/124M/model.ckpt"\n')
    assert find_checkpoint(folder) == os.path.join(folder, "model.ckpt")


def _one_line_error(error_type, fn, *parts):
    with pytest.raises(error_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_missing_folder_and_files(tmp_path, openai_folder):
    _one_line_error(FileNotFoundError, lambda: load_model(str(tmp_path / "nope")), "does not exist", "download_gpt2")
    folder, _ = openai_folder
    os.remove(os.path.join(folder, "hparams.json"))
    _one_line_error(FileNotFoundError, lambda: load_model(folder), "hparams.json not found")
    os.remove(os.path.join(folder, "checkpoint"))
    _one_line_error(FileNotFoundError, lambda: load_model(folder), "holds no checkpoint")


def test_hparams_disagreeing_with_checkpoint_names_the_tensor(openai_folder, tiny_hparams):
    folder, _ = openai_folder
    with open(os.path.join(folder, "hparams.json"), "w") as f:
        json.dump(dict(tiny_hparams, n_embd=32), f)
    _one_line_error(ValueError, lambda: load_model(folder), "model/wte", "[97, 16]", "[97, 32]")
    with open(os.path.join(folder, "hparams.json"), "w") as f:
        json.dump(dict(tiny_hparams, n_layer=3), f)
    _one_line_error(ValueError, lambda: load_model(folder), "no tensor model/h2/ln_1/g")
    with open(os.path.join(folder, "hparams.json"), "w") as f:
        f.write('{"n_vocab": 97, "n_ctx"')
    _one_line_error(ValueError, lambda: load_model(folder), "hparams.json is not valid JSON")


def test_truncated_data_file_is_a_clear_error(openai_folder):
    folder, _ = openai_folder
    data = os.path.join(folder, "model.ckpt.data-00000-of-00001")
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    _one_line_error(ValueError, lambda: load_model(folder), "truncated or corrupt", "model.ckpt.data-00000-of-00001")


def test_a_16_bit_base_loads_tensor_by_tensor_equal_to_a_plain_load(openai_folder):
    """Each tensor is read alone and cast to the storage dtype: the same bits as casting a float32 load."""
    folder, weights = openai_folder
    plain = load_model(folder)
    for name, var in plain.weights.items():
        np.testing.assert_array_equal(var.numpy().reshape(weights[name].shape), weights[name])
    for precision, dtype in (("bfloat16", tf.bfloat16), ("float16", tf.float16)):
        model = load_model(folder, base_precision=precision)
        for name, var in model.weights.items():
            assert var.dtype == (tf.float32 if "/ln_" in name else dtype) and not var.trainable, name
            np.testing.assert_array_equal(var.numpy(), tf.cast(plain.weights[name], var.dtype).numpy(), err_msg=name)

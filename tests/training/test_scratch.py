"""Training from scratch: a random-weight model folder from a preset, then learn vocabulary ->
create -> finetune on a templated corpus, with a held-out loss far below the unigram entropy."""
import collections
import math
import os
import random
import time

import numpy as np
import pytest
import tensorflow as tf
from vocab import write_toy_vocab

import gpt2_simple as gpt2
from encoder import get_encoder, learn_bpe
from gpt2_simple.formats.checkpoint import numpy_weights
from gpt2_simple.model.hparams import PRESETS, HParams
from gpt2_simple.training.step import lm_loss

TOY_SIZE = 266  # tests/vocab.py: 256 bytes + 9 merges + <|endoftext|>


def test_folder_in_openai_layout_with_gpt2_init(tmp_path):
    vocab = write_toy_vocab(str(tmp_path / "vocab"))
    hparams = gpt2.create_model(str(tmp_path / "models"), "fresh", "tiny", vocab_dir=vocab, seed=1)
    folder = tmp_path / "models" / "fresh"
    assert sorted(os.listdir(folder)) == ["checkpoint", "encoder.json", "hparams.json",
                                          "model-0.data-00000-of-00001", "model-0.index", "vocab.bpe"]
    assert hparams == gpt2.load_hparams(str(folder)) == HParams(TOY_SIZE, 64, 32, 2, 2)
    for name in ("encoder.json", "vocab.bpe"):
        assert (folder / name).read_bytes() == (tmp_path / "vocab" / name).read_bytes()
    weights = numpy_weights(gpt2.load_model(str(folder)))
    assert weights["model/wte"].shape == (TOY_SIZE, 32)
    assert abs(weights["model/wte"].std() - 0.02) < 0.001 and abs(weights["model/wte"].mean()) < 0.001
    assert abs(weights["model/wpe"].std() - 0.01) < 0.001
    assert abs(weights["model/h1/mlp/c_fc/w"].std() - 0.02) < 0.001
    assert np.all(weights["model/h0/ln_1/g"] == 1) and np.all(weights["model/h0/attn/c_attn/b"] == 0)
    # the seed fixes the weights
    gpt2.create_model(str(tmp_path / "models"), "again", "tiny", vocab_dir=vocab, seed=1)
    gpt2.create_model(str(tmp_path / "models"), "other", "tiny", vocab_dir=vocab, seed=2)
    again = numpy_weights(gpt2.load_model(str(tmp_path / "models" / "again")))
    other = numpy_weights(gpt2.load_model(str(tmp_path / "models" / "other")))
    assert all(np.array_equal(weights[n], again[n]) for n in weights)
    assert not np.array_equal(weights["model/wte"], other["model/wte"])


def test_vocabulary_already_in_the_folder_and_shapes(tmp_path):
    models = str(tmp_path / "models")
    write_toy_vocab(os.path.join(models, "a"))
    shape = {"n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 1}
    assert gpt2.create_model(models, "a", shape) == HParams(n_vocab=TOY_SIZE, **shape)
    write_toy_vocab(os.path.join(models, "b"))
    assert gpt2.create_model(models, "b", HParams(n_ctx=16, n_embd=8, n_head=2, n_layer=1)).n_vocab == TOY_SIZE
    assert gpt2.load_model(os.path.join(models, "b")).hparams.n_vocab == TOY_SIZE


def test_small_preset_size():
    small = PRESETS["small"]
    assert (small.n_ctx, small.n_embd, small.n_head, small.n_layer) == (256, 256, 4, 4)
    blocks = HParams(n_vocab=1, n_ctx=256, n_embd=256, n_head=4, n_layer=4).n_params - 256 - 256 * 256
    assert blocks == 3_159_552  # as documented beside the preset
    assert HParams(8000, 256, 256, 4, 4).n_params == 5_273_088


def test_never_overwrites_and_errors_name_the_fix(tmp_path):
    models = str(tmp_path / "models")
    vocab = write_toy_vocab(str(tmp_path / "vocab"))
    gpt2.create_model(models, "m", {"n_ctx": 8, "n_embd": 8, "n_head": 1, "n_layer": 1}, vocab_dir=vocab, seed=0)
    before = {p: (tmp_path / "models" / "m" / p).read_bytes() for p in os.listdir(os.path.join(models, "m"))}
    with pytest.raises(FileExistsError, match="already holds checkpoint, encoder.json, hparams.json ...; "
                                              "create_model never overwrites"):
        gpt2.create_model(models, "m", "tiny", vocab_dir=vocab)
    assert before == {p: (tmp_path / "models" / "m" / p).read_bytes() for p in os.listdir(os.path.join(models, "m"))}
    with pytest.raises(FileNotFoundError, match=r"lacks encoder.json or vocab.bpe; learn a vocabulary"):
        gpt2.create_model(models, "new", "tiny")
    with pytest.raises(ValueError, match="preset='huge' is not one of"):
        gpt2.create_model(models, "new", "huge", vocab_dir=vocab)
    with pytest.raises(ValueError, match="preset has missing keys"):
        gpt2.create_model(models, "new", {"n_ctx": 8}, vocab_dir=vocab)
    with pytest.raises(ValueError, match="model_name='../x' must be a plain folder name"):
        gpt2.create_model(models, "../x", "tiny", vocab_dir=vocab)
    assert sorted(os.listdir(models)) == ["m"]


# ---------------------------------------------------------------------------------------------
# From scratch, end to end

SYLLABLES = ["ka", "ri", "to", "mel", "an", "sor", "vi", "de", "lu", "qua", "ne", "bo", "gri", "pa", "zu"]
N_WORDS = 60  # per word class


def grammar(seed=0):
    """Four classes of pseudo-words; each noun has its own verb and object."""
    rng = random.Random(seed)
    classes = []
    for _ in range(4):
        words = set()
        while len(words) < N_WORDS:
            words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))))
        classes.append(sorted(words))
    adjectives, nouns, verbs, objects = classes
    return adjectives, {n: (rng.choice(verbs), rng.choice(objects)) for n in nouns}


def sentences(rng, n):
    """`n` lines 'the <adjective> <noun> <its verb> the <its object> .': 2 ln 60 nats each."""
    adjectives, nouns = grammar()
    names = sorted(nouns)
    lines = []
    for _ in range(n):
        noun = rng.choice(names)
        verb, obj = nouns[noun]
        lines.append(f"the {rng.choice(adjectives)} {noun} {verb} the {obj} .")
    return "\n".join(lines) + "\n"


def entropies(ids):
    """(unigram entropy, entropy of the next token given the previous one), in nats."""
    unigrams, bigrams = collections.Counter(ids), collections.Counter(zip(ids, ids[1:]))
    n = len(ids)
    unigram = -sum(c / n * math.log(c / n) for c in unigrams.values())
    before = collections.Counter(ids[:-1])
    bigram = -sum(c / (n - 1) * math.log(c / before[a]) for (a, _), c in bigrams.items())
    return unigram, bigram


@pytest.mark.slow
def test_learn_create_finetune_from_scratch(tmp_path, capsys):
    start = time.time()
    text = sentences(random.Random(1), 8000)  # ~300 KB
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    models = str(tmp_path / "models")
    enc = learn_bpe(corpus, 500, os.path.join(models, "scratch"))
    assert len(enc.encoder) == 500
    gpt2.create_model(models, "scratch", "tiny", seed=0)

    ids = enc.encode(text)
    unigram, bigram = entropies(ids)
    floor = 2 * math.log(N_WORDS) * 8000 / len(ids)  # the corpus's true entropy per token
    assert bigram < 0.4 * unigram and floor < 0.27 * unigram  # so the bars below mean something

    sess = gpt2.start_tf_sess()
    result = gpt2.finetune(sess, str(corpus), steps=600, model_name="scratch", model_dir=models, batch_size=8,
                           accumulate_gradients=1, learning_rate=3e-3, checkpoint_dir=str(tmp_path / "checkpoint"),
                           sample_every=0, save_every=0, print_every=100, seed=0,
                           sample_dir=str(tmp_path / "samples"))
    model = gpt2.load_model(result.run_dir)
    held_out = get_encoder(result.run_dir).encode(sentences(random.Random(2), 1200))
    n_ctx = model.hparams.n_ctx
    windows = np.array([held_out[i:i + n_ctx] for i in range(0, len(held_out) - n_ctx, n_ctx)][:64], np.int32)
    loss = float(lm_loss(model, tf.constant(windows)))
    elapsed = time.time() - start
    with capsys.disabled():
        print(f"\nfrom scratch: held-out {loss:.3f} nats, unigram {unigram:.3f}, bigram {bigram:.3f}, "
              f"floor {floor:.3f}, {elapsed:.1f} s")
    assert loss < 0.7 * unigram
    assert loss < bigram - 0.2  # it predicts the object from the noun three tokens back: attention works
    assert loss > 0.95 * floor  # and no better than the text allows: the held-out text is unseen

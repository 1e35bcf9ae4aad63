"""Hugging Face's layout both ways: export and load round trips, the safetensors reader and writer
against the `safetensors` package and `transformers`, untrusted files, and fine-tuning from a
Hugging Face base folder."""
import json
import os

import numpy as np
import pytest
from openai_layout import make_openai_folder
from runs import TINY_REAL_VOCAB, make_tiny_model, write_text
from vocab import write_toy_vocab

import gpt2_simple as gpt2
from encoder import get_encoder
from gpt2_simple.formats import hf
from gpt2_simple.formats.checkpoint import numpy_weights, save_checkpoint
from gpt2_simple.formats.safetensors_file import SafeTensors
from gpt2_simple.model.hparams import save_hparams

HF_FILES = ["README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
            "tokenizer_config.json", "vocab.json"]  # a complete repository (formats/model_card.py)
TOKENS = np.array([[0, 5, 17, 42, 96, 3], [1, 2, 3, 4, 5, 6]])


def read_safetensors(path):
    """All tensors of safetensors file `path` as `{name: float32 array}`, through our reader."""
    tensors = SafeTensors(path)
    return {name: tensors.read(name) for name in tensors.shapes}


@pytest.fixture
def model_folder(tmp_path, tiny_hparams):
    """A tiny model folder in OpenAI's layout: random weights, the toy vocabulary."""
    folder = str(tmp_path / "models" / "tiny")
    make_openai_folder(folder, tiny_hparams, seed=0, vocab_dir=write_toy_vocab(str(tmp_path / "vocab")))
    return folder


@pytest.fixture
def hf_folder(tmp_path, model_folder):
    return gpt2.export_hf(model_folder, str(tmp_path / "hf"))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _assert_same_weights(a, b):
    wa, wb = numpy_weights(a), numpy_weights(b)
    assert list(wa) == list(wb)
    for name in wa:
        assert wa[name].dtype == wb[name].dtype == np.float32
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


# ---------------------------------------------------------------------------------------------
# Round trips


def test_export_then_load_is_bit_identical_and_exports_again_byte_identical(tmp_path, model_folder, hf_folder):
    assert sorted(os.listdir(hf_folder)) == HF_FILES
    assert _read(os.path.join(hf_folder, "vocab.json")) == _read(os.path.join(model_folder, "encoder.json"))
    assert _read(os.path.join(hf_folder, "merges.txt")) == _read(os.path.join(model_folder, "vocab.bpe"))
    assert hf.is_hf_folder(hf_folder) and not hf.is_hf_folder(model_folder)

    original, loaded = gpt2.load_model(model_folder), gpt2.load_model(hf_folder)
    assert loaded.hparams == original.hparams
    assert loaded.checkpoint_path == os.path.join(hf_folder, "model.safetensors")
    _assert_same_weights(original, loaded)
    np.testing.assert_array_equal(loaded(TOKENS).numpy(), original(TOKENS).numpy())
    assert get_encoder(hf_folder).encode("hello world") == get_encoder(model_folder).encode("hello world")

    again = gpt2.export_hf(hf_folder, str(tmp_path / "hf2"))
    for name in HF_FILES:
        assert _read(os.path.join(again, name)) == _read(os.path.join(hf_folder, name)), name


def test_export_a_chosen_checkpoint_of_a_run(tmp_path, tiny_hparams):
    run = str(tmp_path / "checkpoint" / "run1")
    write_toy_vocab(run)
    save_hparams(gpt2.HParams(**tiny_hparams), run)
    first, second = (gpt2.GPT2(gpt2.HParams(**tiny_hparams), seed=s) for s in (1, 2))
    save_checkpoint(first, run, 1, max_checkpoints=2)
    save_checkpoint(second, run, 2, max_checkpoints=2)
    _assert_same_weights(gpt2.load_model(gpt2.export_hf(run, str(tmp_path / "latest"))), second)
    _assert_same_weights(gpt2.load_model(gpt2.export_hf(run, str(tmp_path / "one"), checkpoint="model-1")), first)
    with pytest.raises(FileNotFoundError, match="one set of weights"):
        gpt2.load_model(str(tmp_path / "one"), "model-1")


def test_export_never_overwrites_by_accident_and_leaves_no_half_folder(tmp_path, model_folder, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    gpt2.export_hf(model_folder, str(out))  # an empty folder is fine
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gpt2.export_hf(model_folder, str(out))
    assert (out / "mine.txt").read_text() == "keep"
    for target in (model_folder, str(tmp_path / "models")):  # the source itself, or a folder holding it
        with pytest.raises(ValueError, match="contains source"):
            gpt2.export_hf(model_folder, target, overwrite=True)
    assert os.path.isfile(os.path.join(model_folder, "model.ckpt.index"))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(hf, "write_safetensors", disk_full)
    for target in (tmp_path / "new", out):
        with pytest.raises(OSError, match="No space"):
            gpt2.export_hf(model_folder, str(target), overwrite=True)
    assert not (tmp_path / "new").exists() and (out / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out", "vocab"]  # no temporary folder left
    monkeypatch.undo()
    gpt2.export_hf(model_folder, str(out), overwrite=True)
    assert sorted(os.listdir(out)) == HF_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out", "vocab"]


# ---------------------------------------------------------------------------------------------
# The `safetensors` package as the reference


def test_the_safetensors_package_reads_our_file(hf_folder, model_folder):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = os.path.join(hf_folder, "model.safetensors")
    theirs, ours = load_file(path), read_safetensors(path)
    model = gpt2.load_model(model_folder)
    assert sorted(theirs) == sorted(ours) == sorted(name for _, name, _ in hf.hf_table(model.hparams))
    for name in theirs:
        assert theirs[name].dtype == np.float32
        np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert int.from_bytes(_read(path)[:8], "little") % 8 == 0


@pytest.mark.parametrize("prefix", ["transformer.", ""], ids=["GPT2LMHeadModel", "GPT2Model"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_we_read_what_the_safetensors_package_writes(tmp_path, model_folder, prefix, dtype):
    from safetensors.numpy import save_file

    model = gpt2.load_model(model_folder)
    weights = numpy_weights(model)
    tensors = {name.replace("transformer.", prefix): weights[openai].reshape(shape).astype(dtype)
               for openai, name, shape in hf.hf_table(model.hparams)}
    # What older checkpoints carry beside the weights: mask buffers and the tied output layer.
    tensors[f"{prefix}h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), bool))
    tensors[f"{prefix}h.1.attn.masked_bias"] = np.array(-1e4, dtype)
    tensors["lm_head.weight"] = tensors[f"{prefix}wte.weight"]
    folder = tmp_path / "saved"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf.config_from_hparams(model.hparams)))
    loaded = numpy_weights(gpt2.load_model(str(folder)))
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value.astype(dtype).astype(np.float32), err_msg=name)


# ---------------------------------------------------------------------------------------------
# transformers as the reference


@pytest.mark.slow
def test_transformers_loads_our_export_with_equal_logits_and_tokens(tmp_path, real_vocab_dir):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    out = gpt2.export_hf(os.path.join(model_dir, "tiny"), str(tmp_path / "hf"))
    theirs, info = GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    ours = gpt2.load_model(out)
    tokens = np.array([[464, 2068, 7586, 21831, 50256, 0, 11], [15496, 995, 13, 198, 1, 2, 3]])
    with torch.no_grad():
        expected = theirs(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours(tokens).numpy(), expected, atol=1e-4, rtol=1e-4)
    text = "Hello world, it's a test.\n"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == get_encoder(out).encode(text)
    assert get_encoder(out).encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_we_load_what_transformers_saves(tmp_path, tiny_hparams, dtype):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    hparams = gpt2.HParams(**tiny_hparams)
    config = GPT2Config(vocab_size=hparams.n_vocab, n_positions=hparams.n_ctx, n_embd=hparams.n_embd,
                        n_head=hparams.n_head, n_layer=hparams.n_layer, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    theirs = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param in theirs.parameters():  # far from the initialisation, so every weight matters
            param.add_(0.2 * torch.randn_like(param))
    theirs = theirs.to(getattr(torch, dtype))
    theirs.save_pretrained(str(tmp_path / "saved"), safe_serialization=True)
    ours = gpt2.load_model(str(tmp_path / "saved"))
    state = theirs.state_dict()
    weights = numpy_weights(ours)
    for openai, name, shape in hf.hf_table(hparams):
        np.testing.assert_array_equal(weights[openai].reshape(shape), state[name].float().numpy(), err_msg=name)
    if dtype == "float32":
        with torch.no_grad():
            expected = theirs(torch.tensor(TOKENS)).logits.numpy()
        np.testing.assert_allclose(ours(TOKENS).numpy(), expected, atol=1e-4, rtol=1e-4)


def test_we_load_a_sharded_checkpoint_with_its_index(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    # distilgpt2's depth with another width and context: 6 layers of 32, 64 positions, 3 shards.
    config = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_head=2, n_layer=6, bos_token_id=None,
                        eos_token_id=None)
    torch.manual_seed(1)
    theirs = GPT2LMHeadModel(config).eval()
    theirs.save_pretrained(str(tmp_path / "sharded"), safe_serialization=True, max_shard_size="40KB")
    shards = sorted(n for n in os.listdir(tmp_path / "sharded") if n.endswith(".safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file(), shards
    ours = gpt2.load_model(str(tmp_path / "sharded"))
    assert ours.hparams.n_layer == 6 and ours.hparams.n_ctx == 64
    with torch.no_grad():
        expected = theirs(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(ours(TOKENS).numpy(), expected, atol=1e-4, rtol=1e-4)
    os.remove(tmp_path / "sharded" / shards[-1])  # a shard gone: one line naming the file, not other advice
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        gpt2.load_model(str(tmp_path / "sharded"))


# ---------------------------------------------------------------------------------------------
# Untrusted files: every problem is a one-line ValueError naming the file


def _split(path):
    raw = _read(path)
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _file(header, data):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _set(name, key, value):
    def mutate(header, data, config):
        header[name][key] = value(header, data) if callable(value) else value

    return mutate


def _with_extra(header, data, name):
    """The file with one more 16-float tensor `name`, stored after the others."""
    entry = {"dtype": "F32", "shape": [16], "data_offsets": [len(data), len(data) + 64]}
    return _file(dict(header, **{name: entry}), data + bytes(64))


LN_W, LN_B = "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias"
BAD_WEIGHTS = [
    ("shorter than the length", lambda h, d, c: b"\x10\x00", "too short"),
    ("header longer than the file", lambda h, d, c: (10**6).to_bytes(8, "little") + _file(h, d)[8:], "-byte header"),
    ("header length absurd", lambda h, d, c: (2**63).to_bytes(8, "little") + _file(h, d)[8:], "-byte header"),
    ("header not JSON", lambda h, d, c: _file(b"{not json", d), "not JSON"),
    ("header not UTF-8", lambda h, d, c: _file(b'{"\xff": 1}', d), "not JSON"),
    ("header a list", lambda h, d, c: _file(b"[1, 2]", d), "not a JSON object"),
    ("a name twice", lambda h, d, c: _file(json.dumps(h).replace(LN_B, LN_W).encode(), d), f"names {LN_W!r} twice"),
    ("entry not an object", lambda h, d, c: h.update({LN_W: [1]}), "not an object with dtype"),
    ("unknown dtype", _set(LN_W, "dtype", "Q4"), "unknown dtype 'Q4'"),
    ("dtype not a string", _set(LN_W, "dtype", ["F32"]), "unknown dtype ['F32']"),
    ("integer weights", _set(LN_W, "dtype", "I32"), f"tensor {LN_W} has dtype I32; GPT-2 weights are one of"),
    ("negative shape", _set(LN_W, "shape", [-16]), "not a list of non-negative integers"),
    ("shape of floats", _set(LN_W, "shape", [16.0]), "not a list of non-negative integers"),
    ("offsets out of range", _set(LN_W, "data_offsets", lambda h, d: [len(d), len(d) + 64]), "not [begin, end]"),
    ("offsets reversed", _set(LN_W, "data_offsets", lambda h, d: h[LN_W]["data_offsets"][::-1]), "not [begin, end]"),
    ("three offsets", _set(LN_W, "data_offsets", [0, 64, 128]), "not [begin, end]"),
    ("overlapping tensors", _set(LN_B, "data_offsets", lambda h, d: h[LN_W]["data_offsets"]), "overlapping bytes"),
    ("wrong byte count", _set(LN_W, "shape", [17]), "has 64 bytes but F32 of shape [17] takes 68"),
    ("missing tensor", lambda h, d, c: h.pop("transformer.ln_f.bias"), "has no tensor transformer.ln_f.bias"),
    ("a layer too many", lambda h, d, c: _with_extra(h, d, "transformer.h.2.ln_1.weight"), "tensor(s) that the GPT-2"),
    ("prefixed and bare", lambda h, d, c: _with_extra(h, d, "h.0.ln_1.weight"), "twice, with and without"),
    ("shape against config.json", lambda h, d, c: c.update(n_positions=16), "config.json implies [16, 16]"),
]


@pytest.mark.slow
@pytest.mark.parametrize("mutate, expected", [c[1:] for c in BAD_WEIGHTS], ids=[c[0] for c in BAD_WEIGHTS])
def test_untrusted_weights_file(hf_folder, mutate, expected):
    path = os.path.join(hf_folder, "model.safetensors")
    header, data = _split(path)
    with open(os.path.join(hf_folder, "config.json")) as f:
        config = json.load(f)
    raw = mutate(header, data, config)
    with open(path, "wb") as f:
        f.write(raw if isinstance(raw, bytes) else _file(header, data))
    with open(os.path.join(hf_folder, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError) as error:
        gpt2.load_model(hf_folder)
    message = str(error.value)
    assert "\n" not in message and path in message and expected in message, message


BAD_CONFIGS = [
    ("another model", {"model_type": "llama"}, "model_type='llama'"),
    ("no model_type", {"model_type": None}, "model_type=None"),
    ("exact GELU", {"activation_function": "gelu"}, "activation_function='gelu'"),
    ("another epsilon", {"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
    ("unscaled attention", {"scale_attn_weights": False}, "scale_attn_weights=False"),
    ("attention scaled by layer", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("untied output layer", {"tie_word_embeddings": False}, "tie_word_embeddings=False"),
    ("wider MLP", {"n_inner": 100}, "n_inner=100"),
    ("no vocab_size", {"vocab_size": None}, "n_vocab=None"),
    ("heads do not divide", {"n_head": 3}, "not divisible"),
    ("not an object", [1], "JSON object"),
    ("not JSON", "{oops", "not valid JSON"),
]


@pytest.mark.slow
@pytest.mark.parametrize("change, expected", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_config_that_is_not_gpt2(hf_folder, change, expected):
    path = os.path.join(hf_folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    if isinstance(change, dict):
        config.update(change)
        config = {k: v for k, v in config.items() if v is not None or k in ("bos_token_id", "eos_token_id")}
    with open(path, "w") as f:
        f.write(change if isinstance(change, str) else json.dumps(change if isinstance(change, list) else config))
    with pytest.raises(ValueError) as error:
        gpt2.load_model(hf_folder)
    message = str(error.value)
    assert "\n" not in message and path in message and expected in message, message


def test_config_accepts_the_n_ctx_key_and_tanh_gelu_spellings(hf_folder):
    path = os.path.join(hf_folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    del config["n_positions"]
    config["activation_function"] = "gelu_pytorch_tanh"
    with open(path, "w") as f:
        json.dump(config, f)
    assert hf.load_config(hf_folder) == gpt2.HParams(n_vocab=97, n_ctx=32, n_embd=16, n_head=2, n_layer=2)


def test_bfloat16_and_float16_are_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 65280.0, 0.0, -0.0], np.float32)
    half = values.astype(np.float16)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # these values are exact in bfloat16
    header = {"h": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
              "b": {"dtype": "BF16", "shape": [6], "data_offsets": [12, 24]},
              "e": {"dtype": "F32", "shape": [0, 4], "data_offsets": [24, 24]}}
    path = tmp_path / "x.safetensors"
    path.write_bytes(_file(header, half.tobytes() + bf16.tobytes()))
    tensors = read_safetensors(str(path))
    np.testing.assert_array_equal(tensors["h"], values.reshape(2, 3))
    np.testing.assert_array_equal(tensors["b"], values)
    assert tensors["e"].shape == (0, 4) and all(t.dtype == np.float32 for t in tensors.values())


# ---------------------------------------------------------------------------------------------
# Fine-tuning from a Hugging Face base folder


@pytest.mark.slow
def test_finetune_from_a_hugging_face_base_model(tmp_path, monkeypatch, real_vocab_dir, capsys):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    hf_dir = gpt2.export_hf(os.path.join(model_dir, "tiny"), os.path.join(model_dir, "tiny-hf"))
    data = write_text(tmp_path)
    opts = dict(steps=2, model_dir=model_dir, batch_size=1, accumulate_gradients=1, sample_every=0, seed=0,
                learning_rate=1e-3)
    from_hf = gpt2.finetune(gpt2.start_tf_sess(), data, model_name="tiny-hf", run_name="from_hf", **opts)
    assert "Loading checkpoint " + os.path.join(hf_dir, "model.safetensors") in capsys.readouterr().out
    from_file = gpt2.finetune(gpt2.start_tf_sess(), data, restore_from=os.path.join(hf_dir, "model.safetensors"),
                              run_name="from_file", **opts)
    from_openai = gpt2.finetune(gpt2.start_tf_sess(), data, model_name="tiny", run_name="from_openai", **opts)
    for result in (from_hf, from_file):  # the same weights, so the same losses
        assert result.step == 2
        np.testing.assert_allclose([result.losses[s] for s in (1, 2)], [from_openai.losses[s] for s in (1, 2)],
                                   rtol=1e-6)

    run = tmp_path / "checkpoint" / "from_hf"
    files = set(os.listdir(run))
    assert {"checkpoint", "hparams.json", "encoder.json", "vocab.bpe", "model-2.index"} <= files
    assert not files & {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    assert json.loads((run / "hparams.json").read_text()) == TINY_REAL_VOCAB
    for name in ("encoder.json", "vocab.bpe"):
        assert (run / name).read_bytes() == _read(os.path.join(real_vocab_dir, name))

    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, run_name="from_hf")
    reference = gpt2.load_model(str(run.parent / "from_openai"))
    np.testing.assert_allclose(sess.model(TOKENS).numpy(), reference(TOKENS).numpy(), rtol=1e-5, atol=1e-5)
    assert len(gpt2.generate(sess, prefix="The quick", length=5, return_as_list=True, seed=1)) == 1
    gpt2.load_gpt2(sess, model_name="tiny-hf", model_dir=model_dir)  # the Hugging Face folder itself
    assert sess.model.checkpoint_path == os.path.join(hf_dir, "model.safetensors")
    assert gpt2.generate(sess, prefix="The quick", length=5, return_as_list=True, seed=1)[0].startswith("The quick")


def test_command_line(tmp_path, model_folder, capsys):
    from gpt2_simple import cli

    args = vars(cli.build_parser().parse_args(["export_hf", "a", "b"]))
    assert (args["checkpoint"], args["overwrite"]) == ("latest", False)  # the Python defaults
    out = str(tmp_path / "hf")
    assert cli.main(["export_hf", model_folder, out]) == 0
    assert sorted(os.listdir(out)) == HF_FILES and f"Wrote {out}" in capsys.readouterr().out
    assert cli.main(["export_hf", model_folder, out]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err  # shell terms
    assert cli.main(["export_hf", model_folder, out, "--overwrite", "--checkpoint", "latest"]) == 0


def test_export_needs_the_vocabulary(tmp_path, tiny_hparams):
    folder = str(tmp_path / "models" / "novocab")
    make_openai_folder(folder, tiny_hparams)
    with pytest.raises(FileNotFoundError, match="encoder.json not found"):
        gpt2.export_hf(folder, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()

"""GGUF export for llama.cpp: the `gguf` package's reader reads our file; every tensor round-trips;
a NumPy forward pass over the GGUF tensors, in llama.cpp's layout, gives our logits; the metadata
and the embedded tokenizer are llama.cpp's `gpt2` architecture; bad inputs fail in one line."""
import json
import os

import gguf
import numpy as np
import pytest
from reference import _gelu, _layer_norm, _softmax
from runs import make_tiny_model, snapshot
from vocab import TOY_EOT, write_toy_vocab

import gpt2_simple as gpt2
from encoder import get_encoder
from gpt2_simple.cli import main
from gpt2_simple.formats.gguf import gguf_arrays, gguf_table

# Width 32, so that every matrix row is whole q8_0 blocks (32 values).
HPARAMS = {"n_vocab": 50257, "n_ctx": 32, "n_embd": 32, "n_head": 2, "n_layer": 2}
TOKENS = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13], [50256, 40, 716, 257, 1332, 0, 1, 2, 3, 4]])
F32, F16, Q8_0 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0


@pytest.fixture(scope="module")
def folder(tmp_path_factory, real_vocab_dir):
    root = tmp_path_factory.mktemp("gguf")
    return os.path.join(make_tiny_model(root, real_vocab_dir, hparams=HPARAMS, seed=3), "tiny")


@pytest.fixture(scope="module")
def model(folder):
    return gpt2.load_model(folder)


@pytest.fixture(scope="module")
def files(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return {dtype: gpt2.export_gguf(folder, str(out / f"tiny-{dtype}.gguf"), dtype=dtype) for dtype in ("f32", "f16", "q8_0")}


class Readers(dict):
    """{dtype: the gguf package's reader of that file}, each read on first use and kept: a reader parses
    100,000 strings (~4 s), so the quick run, which keeps only the f32 cases, reads one file."""

    def __init__(self, files):  # noqa: D107
        super().__init__()
        self.files = files

    def __missing__(self, dtype):
        self[dtype] = gguf.GGUFReader(self.files[dtype])
        return self[dtype]


@pytest.fixture(scope="module")
def readers(files):
    return Readers(files)


def slow(*values):
    """A parameter set the quick run skips: the f16 and q8_0 files each cost a reader."""
    return pytest.param(*values, marks=pytest.mark.slow)


def fields(reader):
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def tensors(reader):
    """{name: float32 array in NumPy order} of every tensor, dequantized by the gguf package."""
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
            for t in reader.tensors}


def gguf_logits(w, tokens, n_head, eps):
    """GPT-2 over GGUF tensors as llama.cpp's gpt2 graph computes it: `[out, in]` matrices, tied output."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    batch, seq = tokens.shape
    x = w["token_embd.weight"][tokens] + w["position_embd.weight"][:seq]
    d = x.shape[-1] // n_head
    causal = np.tril(np.ones((seq, seq), bool))
    for i in range(len({k.split(".")[1] for k in w if k.startswith("blk.")})):
        p = lambda name: (w[f"blk.{i}.{name}.weight"], w[f"blk.{i}.{name}.bias"])  # noqa: E731
        h = _layer_norm(x, *p("attn_norm"), eps)
        wqkv, bqkv = p("attn_qkv")
        q, k, v = (t.reshape(batch, seq, n_head, d).transpose(0, 2, 1, 3) for t in np.split(h @ wqkv.T + bqkv, 3, -1))
        scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d), -np.inf)
        a = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, n_head * d)
        wo, bo = p("attn_output")
        x = x + a @ wo.T + bo
        h = _layer_norm(x, *p("ffn_norm"), eps)
        (wu, bu), (wd, bd) = p("ffn_up"), p("ffn_down")
        x = x + _gelu(h @ wu.T + bu) @ wd.T + bd
    x = _layer_norm(x, w["output_norm.weight"], w["output_norm.bias"], eps)
    return x @ w["token_embd.weight"].T


# ---------------------------------------------------------------------------------------------
# Tensors


@pytest.mark.slow
def test_tensor_names_and_shapes_are_llama_cpps_gpt2_architecture(readers, model):
    reader = readers["f32"]
    names = [t.name for t in reader.tensors]
    # The names llama.cpp's loader asks for (gguf-py's table of the gpt2 architecture), output.weight aside:
    # the converter writes none, so llama.cpp ties the output layer to token_embd.
    arch = gguf.MODEL_ARCH.GPT2
    expected = set()
    for kind in gguf.MODEL_TENSORS[arch]:
        if kind == gguf.MODEL_TENSOR.OUTPUT:
            continue
        name = gguf.TENSOR_NAMES[kind]
        layers = [name.format(bid=i) for i in range(HPARAMS["n_layer"])] if "{bid}" in name else [name]
        suffixes = ("weight",) if kind in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.POS_EMBD) else ("weight", "bias")
        expected |= {f"{n}.{s}" for n in layers for s in suffixes}
    assert set(names) == expected and len(names) == len(expected) == 4 + 12 * HPARAMS["n_layer"]
    assert names == [name for _, name, _ in gguf_table(model.hparams)]
    e, v, c = HPARAMS["n_embd"], HPARAMS["n_vocab"], HPARAMS["n_ctx"]
    shapes = {t.name: t.shape.tolist() for t in reader.tensors}  # ggml order: ne[0] is the row length
    assert shapes["token_embd.weight"] == [e, v] and shapes["position_embd.weight"] == [e, c]
    assert shapes["blk.1.attn_qkv.weight"] == [e, 3 * e] and shapes["blk.1.attn_qkv.bias"] == [3 * e]
    assert shapes["blk.0.attn_output.weight"] == [e, e]
    assert shapes["blk.0.ffn_up.weight"] == [e, 4 * e] and shapes["blk.0.ffn_down.weight"] == [4 * e, e]
    assert shapes["output_norm.bias"] == [e]


@pytest.mark.parametrize("dtype", ["f32", slow("f16"), slow("q8_0")])
def test_every_tensor_round_trips(readers, model, dtype):
    reader = readers[dtype]
    ours, theirs = gguf_arrays(model), tensors(reader)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert list(theirs) == list(ours)
    matrix = {"f32": F32, "f16": F16, "q8_0": Q8_0}[dtype]
    for name, expected in ours.items():
        stays_f32 = expected.ndim == 1 or name == "position_embd.weight"
        assert types[name] == (F32 if stays_f32 else matrix), name
        got = theirs[name]
        assert got.shape == expected.shape, name
        if types[name] == F32:
            np.testing.assert_array_equal(got, expected, err_msg=name)
        elif types[name] == F16:
            np.testing.assert_array_equal(got, expected.astype(np.float16).astype(np.float32), err_msg=name)
        else:  # q8_0: blocks of 32 values, each within half a step (amax / 127) of the original, plus
            # the step's own f16 rounding (2**-11 relative) times the largest multiplier, 127
            blocks, back = expected.reshape(-1, 32), got.reshape(-1, 32)
            step = np.abs(blocks).max(-1, keepdims=True) / 127
            assert np.all(np.abs(back - blocks) <= step * (0.5 + 127 * 2.0**-11) + 1e-7), name
            assert np.abs(back - blocks).max() > 0  # really quantized
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    n = HPARAMS["n_vocab"] * HPARAMS["n_embd"]
    assert sizes["token_embd.weight"] == {"f32": 4 * n, "f16": 2 * n, "q8_0": n // 32 * 34}[dtype]


@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-4), slow("f16", 2e-2), slow("q8_0", 5e-2)])
def test_numpy_forward_over_gguf_tensors_gives_our_logits(readers, model, dtype, tolerance):
    reader = readers[dtype]
    eps = float(fields(reader)["gpt2.attention.layer_norm_epsilon"])
    theirs = gguf_logits(tensors(reader), TOKENS, HPARAMS["n_head"], eps)
    ours = model.forward(TOKENS)[0].numpy()
    assert theirs.shape == ours.shape == (2, TOKENS.shape[1], HPARAMS["n_vocab"])
    scale = np.abs(ours).max()
    assert np.abs(theirs - ours).max() <= tolerance * scale
    if dtype == "f32":
        assert (theirs.argmax(-1) == ours.argmax(-1)).all()


def test_q8_0_falls_back_to_f16_for_rows_that_are_not_whole_blocks(tmp_path):
    """Rows of width 16 are no whole 32-value q8_0 block: llama.cpp's converter stores such matrices as f16."""
    folder = os.path.join(make_tiny_model(tmp_path, write_toy_vocab(str(tmp_path / "vocab")),
                                          hparams={"n_vocab": TOY_EOT + 1, "n_ctx": 8, "n_embd": 16, "n_head": 2,
                                                   "n_layer": 1}), "tiny")
    reader = gguf.GGUFReader(gpt2.export_gguf(folder, str(tmp_path / "t.gguf"), dtype="q8_0"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_qkv.weight"] == types["blk.0.ffn_up.weight"] == F16
    assert types["blk.0.ffn_down.weight"] == Q8_0  # rows of 4 * 16 = 64 values: two whole blocks
    assert types["blk.0.attn_norm.weight"] == types["position_embd.weight"] == F32
    assert fields(reader)["tokenizer.ggml.eos_token_id"] == TOY_EOT


# ---------------------------------------------------------------------------------------------
# Metadata and tokenizer


@pytest.mark.parametrize("dtype, file_type", [("f32", 0), slow("f16", 1), slow("q8_0", 7)])
def test_metadata_keys_are_llama_cpps(readers, dtype, file_type):
    meta = fields(readers[dtype])
    e = HPARAMS["n_embd"]
    assert meta["general.architecture"] == "gpt2" and meta["general.type"] == "model"
    assert meta["general.name"] == "tiny"
    assert meta["general.file_type"] == file_type and meta["general.quantization_version"] == 2
    assert meta["gpt2.context_length"] == HPARAMS["n_ctx"] and meta["gpt2.embedding_length"] == e
    assert meta["gpt2.feed_forward_length"] == 4 * e and meta["gpt2.block_count"] == HPARAMS["n_layer"]
    assert meta["gpt2.attention.head_count"] == HPARAMS["n_head"]
    assert meta["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"


@pytest.mark.slow  # reads the f16 file
def test_tokenizer_is_gpt2s_vocabulary_merges_and_end_of_text(readers, real_vocab_dir):
    meta = fields(readers["f16"])
    with open(os.path.join(real_vocab_dir, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(real_vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
        merge_lines = [line for line in f.read().split("\n")[1:] if line]
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 50257 and tokens == sorted(vocab, key=vocab.get)
    assert tokens[464] == "The" and tokens[262] == "Ġthe" and tokens[198] == "Ċ" and tokens[50256] == "<|endoftext|>"
    types = meta["tokenizer.ggml.token_type"]
    assert types[50256] == 3 and set(types[:50256]) == {1}  # control for <|endoftext|>, normal for the rest
    assert meta["tokenizer.ggml.merges"] == merge_lines and len(merge_lines) == 50000
    assert meta["tokenizer.ggml.merges"][0] == "Ġ t"
    assert meta["tokenizer.ggml.bos_token_id"] == meta["tokenizer.ggml.eos_token_id"] == 50256
    assert "tokenizer.ggml.add_bos_token" not in meta  # as llama.cpp's converter: GPT-2 adds no bos


def test_a_session_exports_the_same_file_as_its_folder(folder, files, tmp_path):
    sess = gpt2.start_tf_sess()
    sess.set_model(gpt2.load_model(folder), get_encoder(folder), folder)
    path = gpt2.export_gguf(sess, str(tmp_path / "s.gguf"), dtype="f32")
    with open(path, "rb") as a, open(files["f32"], "rb") as b:
        assert a.read() == b.read()


@pytest.mark.slow
def test_cli_export_gguf(folder, tmp_path, capsys):
    path = str(tmp_path / "new" / "cli.gguf")  # its folder is created
    assert main(["export_gguf", folder, path, "--dtype", "q8_0"]) == 0
    assert path in capsys.readouterr().out
    assert fields(gguf.GGUFReader(path))["general.file_type"] == 7
    assert main(["export_gguf", folder, path]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err  # shell terms
    assert main(["export_gguf", folder, path, "--dtype", "q4_0"]) == 2  # argparse refuses the choice
    assert main(["export_gguf", folder, path, "--overwrite"]) == 0
    assert fields(gguf.GGUFReader(path))["general.file_type"] == 1


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_fail_in_one_line_and_touch_nothing(folder, files, tmp_path):
    before = snapshot(os.path.dirname(files["f32"]))
    path = files["f32"]
    with pytest.raises(ValueError, match=r"^dtype='q4_0' is not a GGUF type .*pass one of f32, f16, q8_0$"):
        gpt2.export_gguf(folder, str(tmp_path / "x.gguf"), dtype="q4_0")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        gpt2.export_gguf(folder, path)
    with pytest.raises(FileExistsError, match="is a folder"):
        gpt2.export_gguf(folder, str(tmp_path))
    with pytest.raises(FileNotFoundError):
        gpt2.export_gguf(str(tmp_path / "missing"), str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="session holds no model"):
        gpt2.export_gguf(gpt2.start_tf_sess(), str(tmp_path / "x.gguf"))
    with pytest.raises(ValueError, match="applies to a source folder only"):
        gpt2.export_gguf(gpt2.start_tf_sess(), str(tmp_path / "x.gguf"), checkpoint="model-1")
    with pytest.raises(ValueError, match="must be a run or model folder"):
        gpt2.export_gguf(42, str(tmp_path / "x.gguf"))
    assert snapshot(os.path.dirname(files["f32"])) == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".gguf") or ".tmp-" in n]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(folder, tmp_path, monkeypatch):
    path = str(tmp_path / "keep.gguf")
    with open(path, "wb") as f:
        f.write(b"old")

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        gpt2.export_gguf(folder, path, overwrite=True)
    with open(path, "rb") as f:
        assert f.read() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["keep.gguf"]


def test_a_vocabulary_larger_than_the_model_is_refused(tmp_path, real_vocab_dir):
    small = dict(HPARAMS, n_vocab=1000)
    folder = os.path.join(make_tiny_model(tmp_path, real_vocab_dir, hparams=small), "tiny")
    with pytest.raises(ValueError, match=r"^the vocabulary has 50257 tokens but the model only 1000"):
        gpt2.export_gguf(folder, str(tmp_path / "x.gguf"))

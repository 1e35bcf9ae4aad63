"""GGUF, llama.cpp's weight file: one self-describing file for llama.cpp, Ollama and LM Studio.

This module owns writing a run folder, a model folder or a session as one `.gguf` file in
llama.cpp's `gpt2` architecture, the layout its own converter (`convert_hf_to_gguf.py`, class
`GPT2Model`) writes and its loader (`src/models/gpt2.cpp`) reads:

- tensors `token_embd`, `position_embd`, `blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm,
  ffn_up, ffn_down}` (`.weight` and `.bias`) and `output_norm`; no `output.weight`, because
  llama.cpp ties the output layer to `token_embd` when the file has none. Matrices are stored
  `[out, in]` (NumPy order), so OpenAI's `[1, in, out]` `conv1d` weights are transposed;
- metadata `gpt2.{context_length, embedding_length, feed_forward_length, block_count,
  attention.head_count, attention.layer_norm_epsilon}`, `general.file_type` and the embedded
  byte-level BPE tokenizer (`tokenizer.ggml.{model, pre, tokens, token_type, merges,
  bos_token_id, eos_token_id}`), the end-of-text id being both bos and eos as in GPT-2, and
  the run's `tokenizer.chat_template` when it has one.

The file is written with the `gguf` package (llama.cpp's own Python writer, the optional extra
`gpt2_simple[gguf]`). Norms, biases and `position_embd` stay float32 whatever the dtype, as
llama.cpp's converter keeps them; a `q8_0` matrix whose rows are not whole 32-value blocks is
stored as f16, as that converter does. Reading GGUF back is not this library's job.
"""
import os

import numpy as np

from encoder.bpe import ENDOFTEXT
from encoder.vocab import read_vocab

from ..atomic import staged_path
from ..model.model import GPT2
from ..model.ops import LAYER_NORM_EPSILON
from . import chat_template
from .checkpoint import numpy_weights
from .folders import load_model

DTYPES = ("f32", "f16", "q8_0")
ARCH = "gpt2"
TOKENIZER_MODEL, PRE_TOKENIZER = "gpt2", "gpt-2"  # byte-level BPE with GPT-2's pretokenizer regex
# llama.cpp's token types (gguf.TokenType): ordinary tokens, control (special) tokens, padding.
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4
QK8_0 = 32  # values per q8_0 block
_INSTALL = "export_gguf needs the gguf package (llama.cpp's writer): pip install 'gpt2_simple[gguf]'"


# ---------------------------------------------------------------------------------------------
# Names and shapes


def gguf_table(hparams):
    """`[(openai name, gguf name, transpose)]` in file order; `transpose` turns `[in, out]` into `[out, in]`."""
    table = [("model/wte", "token_embd.weight", False), ("model/wpe", "position_embd.weight", False)]
    for i in range(hparams.n_layer):
        h, blk = f"model/h{i}", f"blk.{i}"
        for ours, theirs in (("ln_1", "attn_norm"), ("attn/c_attn", "attn_qkv"), ("attn/c_proj", "attn_output"),
                             ("ln_2", "ffn_norm"), ("mlp/c_fc", "ffn_up"), ("mlp/c_proj", "ffn_down")):
            norm = ours.startswith("ln_")
            table += [(f"{h}/{ours}/{'g' if norm else 'w'}", f"{blk}.{theirs}.weight", not norm),
                      (f"{h}/{ours}/b", f"{blk}.{theirs}.bias", False)]
    return table + [("model/ln_f/g", "output_norm.weight", False), ("model/ln_f/b", "output_norm.bias", False)]


def gguf_arrays(model):
    """`{gguf name: float32 array}` in GGUF's NumPy shapes (`[n_vocab, n_embd]`, `[3 * n_embd, n_embd]`...)."""
    weights = numpy_weights(model)
    arrays = {}
    for openai, name, transpose in gguf_table(model.hparams):
        value = weights[openai]
        arrays[name] = np.ascontiguousarray(value.reshape(value.shape[-2:]).T if transpose else value, np.float32)
    return arrays


def storage_type(name, array, dtype):
    """The GGUF type name ('f32', 'f16' or 'q8_0') a tensor is stored in for the file's `dtype`.

    As llama.cpp's converter: 1-D tensors, norms and `position_embd` stay f32; q8_0 needs rows
    of whole 32-value blocks, and a matrix without them falls back to f16.
    """
    if array.ndim == 1 or name.endswith("_norm.weight") or name == "position_embd.weight" or dtype == "f32":
        return "f32"
    if dtype == "q8_0" and array.shape[-1] % QK8_0:
        return "f16"
    return dtype


# ---------------------------------------------------------------------------------------------
# The tokenizer


def gguf_tokenizer(encoder, merges, n_vocab):
    """`(tokens, token types, merges as 'a b' strings, end-of-text id or None)` for the file.

    Args:
        encoder: `encoder.json`'s mapping symbol string -> id; its ids are 0..len-1.
        merges: `vocab.bpe`'s pairs, highest priority first.
        n_vocab: the model's vocabulary size; ids the vocabulary lacks become `[PAD<id>]`
            padding tokens, as llama.cpp's converter writes them.

    Raises:
        ValueError: the vocabulary has more tokens than the model has rows in `wte`.
    """
    if len(encoder) > n_vocab:
        raise ValueError(f"the vocabulary has {len(encoder)} tokens but the model only {n_vocab} (n_vocab); "
                         "export the folder the model was trained with")
    symbols = {i: s for s, i in encoder.items()}
    tokens = [symbols.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = [CONTROL if tokens[i] == ENDOFTEXT else NORMAL if i in symbols else USER_DEFINED for i in range(n_vocab)]
    return tokens, types, [f"{left} {right}" for left, right in merges], encoder.get(ENDOFTEXT)


# ---------------------------------------------------------------------------------------------
# Export


def export_gguf(source, path, *, dtype="f16", checkpoint="latest", overwrite=False):
    """Write a run or model as one GGUF file for llama.cpp (and Ollama, LM Studio).

    Args:
        source: a run folder (`checkpoint/run1`), a model folder (`models/124M`), a folder in
            Hugging Face's layout, or a `Session` holding a model (after `load_gpt2` or `finetune`).
        path: the `.gguf` file to write (its folder is created); it is written beside, under a
            temporary name, then renamed.
        dtype: how the matrices are stored: 'f32' (exact), 'f16' (half the size) or 'q8_0'
            (8-bit blocks, about a quarter of f32). Norms, biases and position embeddings stay f32.
        checkpoint: 'latest', or the name of one checkpoint in a source folder (e.g. 'model-1000').
        overwrite: replace `path` when it already exists.

    Returns:
        `path`.

    Raises:
        ImportError: the `gguf` package is not installed.
        FileExistsError: `path` exists and `overwrite` is False, or it is a folder.
        FileNotFoundError: the source folder, its weights or its vocabulary is missing.
        ValueError: an unknown `dtype`, a source that is not a folder or a session with a model,
            or a vocabulary larger than the model's.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a GGUF type gpt2_simple writes; pass one of {', '.join(DTYPES)}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FileExistsError(f"path={path!r} is a folder; pass the path of a .gguf file to create")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"path={path!r} already exists; pass overwrite=True to replace it, or pick a new path")
    try:
        import gguf
    except ImportError:
        raise ImportError(_INSTALL) from None
    model, (encoder, merges), name = _resolve(source, checkpoint)
    tokenizer = gguf_tokenizer(encoder, merges, model.hparams.n_vocab)
    folder = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "folder", None)
    _write(gguf, path, model, tokenizer, dtype, name, chat_template.read_run_template(folder))
    return path


def _resolve(source, checkpoint):
    """`(model, (encoder, merges), name)` for a folder or a Session."""
    if isinstance(source, (str, os.PathLike)):
        folder = os.fspath(source)
        model = load_model(folder, checkpoint)
        return model, read_vocab(folder), os.path.basename(os.path.normpath(folder))
    if checkpoint not in (None, "latest"):
        raise ValueError(f"checkpoint={checkpoint!r} applies to a source folder only; load that checkpoint "
                         "into the session first, or pass the run folder as source")
    model, encoder = getattr(source, "model", None), getattr(source, "encoder", None)
    if isinstance(model, GPT2) and encoder is not None:
        ranks = encoder.bpe_ranks
        folder = getattr(source, "folder", None)
        name = os.path.basename(os.path.normpath(folder)) if folder else "gpt2"
        return model, (encoder.encoder, sorted(ranks, key=ranks.get)), name
    if hasattr(source, "model"):
        raise ValueError("source session holds no model; call gpt2.load_gpt2(sess, run_name='run1') first")
    raise ValueError(f"source={source!r} must be a run or model folder, or a Session holding a model")


def _write(gguf, path, model, tokenizer, dtype, name, template=None):
    """Fill a temporary file beside `path` with the header, metadata and tensors; rename it on success."""
    hp = model.hparams
    tokens, types, merges, eot = tokenizer
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with staged_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(name)
            writer.add_context_length(hp.n_ctx)
            writer.add_embedding_length(hp.n_embd)
            writer.add_feed_forward_length(4 * hp.n_embd)
            writer.add_block_count(hp.n_layer)
            writer.add_head_count(hp.n_head)
            writer.add_layer_norm_eps(LAYER_NORM_EPSILON)
            file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
            writer.add_file_type(int(file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_tokenizer_model(TOKENIZER_MODEL)
            writer.add_tokenizer_pre(PRE_TOKENIZER)
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_merges(merges)
            if eot is not None:  # without <|endoftext|>, llama.cpp keeps its defaults
                writer.add_bos_token_id(eot)
                writer.add_eos_token_id(eot)
            if template is not None:  # the run's chat template, as llama.cpp's server reads it
                writer.add_chat_template(template)
            for tensor_name, array in gguf_arrays(model).items():
                kind = getattr(gguf.GGMLQuantizationType, storage_type(tensor_name, array, dtype).upper())
                writer.add_tensor(tensor_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

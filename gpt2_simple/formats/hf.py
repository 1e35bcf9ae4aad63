"""Hugging Face's GPT-2 layout, both ways: `config.json`, `model.safetensors`, `vocab.json`, `merges.txt`.

This module owns the folder that `transformers`' `GPT2LMHeadModel.save_pretrained` writes and
`from_pretrained` reads: the rule that turns the OpenAI names of `checkpoint.openai_variables` into
Hugging Face's (`model/h0/attn/c_attn/w` <-> `transformer.h.0.attn.c_attn.weight`, `[1, nx, nf]`
<-> `[nx, nf]`), the check that `model.safetensors` holds the GPT-2 that `config.json` describes,
and `config.json` <-> `HParams`, `load_hf_model` and `write_hf_folder`. Which layout a folder is in,
and `export_hf`, are `folders.py`'s. The safetensors format itself
(reading a file as untrusted input, writing one) is `safetensors_file.py`'s. Run folders stay in
the OpenAI format, and the vocabulary is the same two files under other names (`encoder/vocab.py`
reads both).
"""
import json
import os
import re
import shutil

from encoder.vocab import HF_VOCAB_FILES

from ..atomic import write_text
from ..errors import one_line
from ..model.hparams import HParams
from ..model.lora import base_dtype, frozen_init
from ..model.model import GPT2
from ..model.ops import LAYER_NORM_EPSILON
from .checkpoint import numpy_weights, openai_variables
from .safetensors_file import (
    FLOATS,
    SafeTensors,
    bad,
    short,
    write_safetensors,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint: which shard file holds each tensor
EOT_ID = 50256  # <|endoftext|>: GPT-2's bos and eos token
# The tied output layer and attention-mask buffers that some checkpoints carry: no weights of GPT-2.
_IGNORED = re.compile(r"^(transformer\.)?(lm_head\.weight|h\.\d+\.attn\.(bias|masked_bias))$")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # the same tanh approximation
# config.json keys that change GPT-2's math: (the value it must have, its default when absent).
_FIXED = {
    "layer_norm_epsilon": (LAYER_NORM_EPSILON, 1e-5),
    "scale_attn_weights": (True, True),
    "scale_attn_by_inverse_layer_idx": (False, False),
    "tie_word_embeddings": (True, True),
    "add_cross_attention": (False, False),
}


# ---------------------------------------------------------------------------------------------
# Names and config.json


def hf_name(name):
    """Hugging Face's name for an OpenAI variable: `model/h0/attn/c_attn/w` -> `transformer.h.0.attn.c_attn.weight`."""
    *path, leaf = name.split("/")[1:]  # without the "model" scope
    if not path:  # wte, wpe: embedding tables
        path, leaf = [leaf], "w"
    path = [re.sub(r"^h(\d+)$", r"h.\1", part) for part in path]
    return "transformer." + ".".join(path + ["bias" if leaf == "b" else "weight"])


def hf_table(hparams):
    """`[(openai name, hf name, hf shape)]` from the OpenAI table; Conv1D weights lose the leading 1."""
    return [(name, hf_name(name), shape[1:] if len(shape) == 3 else shape)
            for name, shape in openai_variables(hparams)]


def load_config(folder):
    """The `HParams` of `folder/config.json`, refusing models that are not GPT-2's architecture.

    Raises:
        FileNotFoundError: no config.json.
        ValueError: not JSON, or a model type, activation or option that GPT-2 here does not compute.
    """
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; a folder in Hugging Face's layout needs config.json")
    with open(path, "rb") as f:
        try:
            config = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path} is not valid JSON ({one_line(e, 200)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    problems = [f"{key}={config.get(key, default)!r} (GPT-2 has {need!r})"
                for key, (need, default) in _FIXED.items() if config.get(key, default) != need]
    if config.get("model_type") != "gpt2":
        problems.insert(0, f"model_type={config.get('model_type')!r} (GPT-2 has 'gpt2')")
    if config.get("activation_function", "gelu_new") not in _TANH_GELUS:
        problems.append(f"activation_function={config['activation_function']!r} (GPT-2 has 'gelu_new')")
    if problems:
        raise ValueError(f"{path} describes a model gpt2_simple cannot run: {'; '.join(problems)}")
    values = {"n_vocab": config.get("vocab_size"), "n_ctx": config.get("n_positions", config.get("n_ctx")),
              "n_embd": config.get("n_embd"), "n_head": config.get("n_head"), "n_layer": config.get("n_layer")}
    hparams = HParams.from_dict(values, source=path)
    if config.get("n_inner") not in (None, 4 * hparams.n_embd):
        raise ValueError(f"{path} describes a model gpt2_simple cannot run: n_inner={config['n_inner']!r} "
                         f"(GPT-2 has 4 * n_embd = {4 * hparams.n_embd})")
    return hparams


def config_from_hparams(hparams):
    """A `config.json` dict that `transformers.GPT2Config` / `GPT2LMHeadModel` read as this model."""
    eot = EOT_ID if hparams.n_vocab > EOT_ID else None  # only where <|endoftext|> is in the vocabulary
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": hparams.n_vocab, "n_positions": hparams.n_ctx, "n_ctx": hparams.n_ctx,
        "n_embd": hparams.n_embd, "n_head": hparams.n_head, "n_layer": hparams.n_layer, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "add_cross_attention": False, "use_cache": True,
        "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "initializer_range": 0.02,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------------------------
# Loading


def is_hf_folder(folder):
    """True for a folder in Hugging Face's layout: config.json and model.safetensors (or a sharded
    checkpoint's index), no TF `checkpoint` file."""
    return (os.path.isfile(os.path.join(folder, CONFIG_FILE)) and not os.path.isfile(os.path.join(folder, "checkpoint"))
            and any(os.path.isfile(os.path.join(folder, name)) for name in (WEIGHTS_FILE, INDEX_FILE)))


def weights_path(folder):
    """The weights of a folder in Hugging Face's layout (what a TF checkpoint prefix is elsewhere): its
    `model.safetensors`, or the index of its shards."""
    single = os.path.join(folder, WEIGHTS_FILE)
    return single if os.path.isfile(single) else os.path.join(folder, INDEX_FILE)


class Shards:
    """The tensors of a sharded checkpoint (`model.safetensors.index.json` and the files it names), read as one file."""

    def __init__(self, path):
        self.path = path
        folder = os.path.dirname(path)
        try:
            with open(path, encoding="utf-8") as f:
                where = json.load(f)["weight_map"]
            files = sorted(set(where.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise bad(path, f"is not a safetensors index ({one_line(e, 200)}): it needs a weight_map of "
                            "tensor names to shard files") from None
        if any(not isinstance(name, str) or os.path.basename(name) != name for name in files):
            raise bad(path, "names a shard outside its folder; a shard is a file name beside the index")
        shards = {name: SafeTensors(os.path.join(folder, name)) for name in files}
        self.where = {tensor: shards[name] for tensor, name in where.items()}
        missing = sorted(t for t, shard in self.where.items() if t not in shard.shapes)
        if missing:
            raise bad(path, f"says {short(missing[0])} is in a shard that lacks it; download the model again")
        self.shapes = {t: shard.shapes[t] for t, shard in self.where.items()}
        self.dtypes = {t: shard.dtypes[t] for t, shard in self.where.items()}

    def read(self, name):
        return self.where[name].read(name)


def load_hf_model(folder, checkpoint="latest", *, base_precision=None):
    """Load GPT-2 from a folder in Hugging Face's layout (`save_pretrained`'s, or `export_hf`'s).

    Args:
        folder: a folder with `config.json` and `model.safetensors`, or the shards that
            `model.safetensors.index.json` names (GPT2LMHeadModel or GPT2Model names; F32, F16 or
            BF16; any depth, width and context).
        checkpoint: 'latest' (or the weights file's name): such a folder holds one set of weights.
        base_precision: None, or a dtype name: the weights are created frozen in it (LoRA).

    Returns:
        A `GPT2` with `.checkpoint_path` the safetensors file (or the shards' index).

    Raises:
        FileNotFoundError: missing files, or another checkpoint name.
        ValueError: a config.json that is not GPT-2's, or a malformed weights file or one that
            does not match config.json (one line naming the file and the tensor).
    """
    if checkpoint not in (None, "latest", WEIGHTS_FILE, INDEX_FILE):
        raise FileNotFoundError(f"checkpoint={checkpoint!r} not found: {folder} is in Hugging Face's layout and "
                                f"holds one set of weights, {WEIGHTS_FILE}; pass checkpoint='latest'")
    hparams = load_config(folder)
    path = weights_path(folder)
    tensors = Shards(path) if path.endswith(INDEX_FILE) else SafeTensors(path)
    names = _names_in_file(tensors, hparams, os.path.join(folder, CONFIG_FILE))
    init = lambda name, shape: tensors.read(names[name]).reshape(shape)  # noqa: E731
    model = GPT2(hparams, init=init if base_precision is None else frozen_init(init, base_dtype(base_precision)))
    model.checkpoint_path = tensors.path
    return model


def _names_in_file(tensors, hparams, config_path):
    """{OpenAI name: name in the file}, checking that the file holds GPT-2's tensors in config.json's shapes."""
    found = {}
    for name in tensors.shapes:
        if _IGNORED.match(name):
            continue
        key = name if name.startswith("transformer.") else "transformer." + name  # GPT2Model: no prefix
        if key in found:
            raise bad(tensors.path, f"holds {short(name)} twice, with and without the 'transformer.' prefix")
        found[key] = name
    names = {}
    for openai, hf, shape in hf_table(hparams):
        if hf not in found:
            raise bad(tensors.path, f"has no tensor {hf}; it is not the GPT-2 that {config_path} describes")
        names[openai] = found.pop(hf)
        if tensors.dtypes[names[openai]] not in FLOATS:
            raise bad(tensors.path, f"tensor {hf} has dtype {tensors.dtypes[names[openai]]}; GPT-2 weights are one "
                                    f"of {sorted(FLOATS)}")
        if tensors.shapes[names[openai]] != shape:
            raise bad(tensors.path, f"tensor {hf} has shape {list(tensors.shapes[names[openai]])} but "
                                    f"{config_path} implies {list(shape)}; the two do not belong together")
    if found:
        raise bad(tensors.path, f"has {len(found)} tensor(s) that the GPT-2 of {config_path} lacks, e.g. "
                                f"{short(min(found.values()))}; the two do not belong together")
    return names


# ---------------------------------------------------------------------------------------------
# Writing


def write_hf_folder(model, vocab, folder):
    """Write `model` and the vocabulary files `vocab` (encoder.json, vocab.bpe) into `folder` in HF's names."""
    weights = numpy_weights(model)
    write_safetensors(os.path.join(folder, WEIGHTS_FILE),
                      {hf: weights[openai].reshape(shape) for openai, hf, shape in hf_table(model.hparams)})
    write_text(os.path.join(folder, CONFIG_FILE), json.dumps(config_from_hparams(model.hparams), indent=2) + "\n")
    for src, name in zip(vocab, HF_VOCAB_FILES):
        shutil.copyfile(src, os.path.join(folder, name))

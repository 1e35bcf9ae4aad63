"""Low-rank adapters (LoRA) beside GPT-2's dense layers, over a frozen base that may be 16-bit.

This module owns the adapter math and nothing about files: `enable_lora(model, rank)` freezes
every weight of a `GPT2` (optionally storing it in bfloat16 or float16) and wraps the targeted
`conv1d` layers so each computes `x @ W + b + scale * (x @ A) @ B` with trainable float32
`A [nx, r]` (random) and `B [r, nf]` (zero, so the model is unchanged until B moves), where
`scale = alpha / r`. `W + scale * A @ B` is never formed in the forward pass, and a frozen
weight is a non-trainable variable, so no gradient is ever computed for it. `merged_weights`
gives the float32 weights with the adapters folded in (what a save writes), `merge_lora` folds
them into the model itself. Saving adapters, peft's format and `finetune`'s options are
`formats/` and `training/` business.
"""
import dataclasses
import math
import re

import numpy as np
import tensorflow as tf

from . import ops

# Adaptable layers, by their names in the checkpoint table (`model/h<i>/<target>/w`).
TARGETS = ("c_attn", "attn/c_proj", "c_fc", "mlp/c_proj")
# All four by default: the frozen weights cost the same either way, rank-8 adapters on all four
# are under 1% of the weights, and adapting the MLP as well as attention follows full
# fine-tuning more closely than attention alone (peft's GPT-2 default is c_attn only).
DEFAULT_TARGETS = TARGETS
LAYER_PATHS = {"c_attn": "attn/c_attn", "attn/c_proj": "attn/c_proj", "c_fc": "mlp/c_fc", "mlp/c_proj": "mlp/c_proj"}
BASE_PRECISIONS = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """The adapters of a model: rank r, alpha (scale = alpha / r) and the targeted layers."""

    rank: int
    alpha: float
    targets: tuple

    @property
    def scale(self):
        return self.alpha / self.rank

    def to_dict(self):
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def check_settings(rank, alpha=None, targets=None, *, prefix=""):
    """A `LoRAConfig` from user values, or a one-line ValueError naming `<prefix>rank`, ... .

    `alpha` defaults to `rank` (scale 1, as keras-hub and peft's defaults r=8, alpha=8);
    `targets` to `DEFAULT_TARGETS`; a string of comma-separated names is accepted (the CLI).
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"{prefix}rank={rank!r} must be a positive integer such as 8 (0 turns adapters off)")
    alpha = float(rank) if alpha is None else alpha
    if isinstance(alpha, str):
        try:
            alpha = float(alpha)
        except ValueError:
            raise ValueError(f"{prefix}alpha={alpha!r} must be a number > 0 such as 16, or None for the rank") from None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"{prefix}alpha={alpha!r} must be a number > 0 such as 16, or None for the rank")
    targets = DEFAULT_TARGETS if targets is None else targets
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"{prefix}targets={list(targets)!r} names no layer or an unknown one ({unknown}); "
                         f"use some of {list(TARGETS)}")
    return LoRAConfig(int(rank), float(alpha), tuple(t for t in TARGETS if t in targets))


def base_dtype(base_precision, argument="base_precision"):
    """The tf dtype of a `base_precision` name, or a one-line ValueError."""
    if base_precision not in BASE_PRECISIONS:
        raise ValueError(f"{argument}={base_precision!r} is not supported; use one of {list(BASE_PRECISIONS)}")
    return BASE_PRECISIONS[base_precision]


# ---------------------------------------------------------------------------------------------
# The frozen base


def frozen_dtype(name, dtype):
    """The dtype weight `name` of a base frozen in `dtype` is stored in: LayerNorm's g and b stay float32.

    LayerNorm computes in float32 and its vectors are 0.03% of the weights, so they are not
    worth rounding.
    """
    return tf.float32 if "/ln_" in name else dtype


def frozen_variable(name, value, dtype):
    """A non-trainable variable holding `value` in `frozen_dtype(name, dtype)`."""
    return tf.Variable(tf.cast(value, frozen_dtype(name, dtype)), trainable=False, name=name.rsplit("/", 1)[-1])


def cast_on_use(weight, x):
    """`weight` in `x`'s dtype, cast only once `x` exists.

    A compiled step runs an op as soon as its inputs are ready, and a cast of a weight needs
    only the weight: without the control dependency on `x`, the casts of every layer would run
    at the start of the step and a float32 copy of the whole 16-bit base would be alive at once.
    A weight already in `x`'s dtype is returned as it is.
    """
    if weight.dtype == x.dtype:
        return weight
    with tf.control_dependencies([x]):
        return tf.cast(weight, x.dtype)


def frozen_init(init, dtype):
    """Wrap a `GPT2` initialiser so every weight is created frozen in `dtype` (no float32 copy first)."""
    return lambda name, shape: frozen_variable(name, init(name, shape), dtype)


def _owner(model, name):
    """(the layer object holding weight `name`, its attribute): `model/h0/attn/c_attn/w` -> (c_attn, 'w')."""
    *path, leaf = name.split("/")[1:]
    obj = model
    for part in path:
        layer = re.fullmatch(r"h(\d+)", part)
        obj = model.h[int(layer.group(1))] if layer else getattr(obj, part)
        obj = getattr(obj, "base", obj)  # through an adapter to the layer it wraps
    return obj, leaf


def freeze(model, dtype=None):
    """Make every weight of `model` non-trainable, stored in `dtype` (None: as it is)."""
    for name, var in list(model.weights.items()):
        want = var.dtype if dtype is None or "/ln_" in name else dtype
        if not var.trainable and var.dtype == want:
            continue
        new = frozen_variable(name, var, want)
        obj, leaf = _owner(model, name)
        setattr(obj, leaf, new)
        model.weights[name] = new


# ---------------------------------------------------------------------------------------------
# Adapters


class LoRAConv1D(tf.Module):
    """A frozen `Conv1D` plus a trainable rank-r update: `x @ W + b + scale * (x @ A) @ B`."""

    def __init__(self, base, rank, scale, rng):
        super().__init__(name=base.name)
        self.base = base
        nx, nf = base.w.shape
        bound = 1.0 / math.sqrt(nx)  # peft's kaiming-uniform bound for A
        self.lora_A = tf.Variable(rng.uniform(-bound, bound, size=(nx, rank)).astype(np.float32), name="lora_A")
        self.lora_B = tf.Variable(tf.zeros([rank, nf], tf.float32), name="lora_B")
        self.scale = float(scale)

    @property
    def w(self):
        return self.base.w

    @property
    def b(self):
        return self.base.b

    def __call__(self, x, rows=None, gelu_first=False, norm=None):
        y = self.base(x, rows, gelu_first, norm)  # [..., nf]
        x = first(x, gelu_first, norm)
        nx, nf = self.lora_A.shape[0], self.lora_B.shape[1]
        a = tf.matmul(tf.reshape(x, [-1, nx]), tf.cast(self.lora_A, x.dtype))  # [batch*seq, r]
        update = tf.matmul(a, tf.cast(self.lora_B, x.dtype)) * tf.cast(self.scale, x.dtype)  # [batch*seq, nf]
        return y + tf.reshape(update, tf.concat([tf.shape(x)[:-1], [nf]], axis=0))

    def delta(self):
        """`scale * A @ B` in float32: `[nx, nf]`."""
        return self.scale * tf.matmul(self.lora_A, self.lora_B)


def first(x, gelu_first, norm):
    """What a `Conv1D` called with `gelu_first` or `norm` multiplies: `x`, `gelu(x)` or `norm(x)` (what the
    adapters multiply too)."""
    return norm(x) if norm is not None else ops.gelu(x) if gelu_first else x


def row_update(x, rows):
    """Each row's own low-rank update, several adapters over one base in one batch (`adapter_rows.py`): `x`
    `[batch, seq, nx]`, `rows` = (A `[nx, P * R]`, B `[P * R, nf]`, mask `[batch, P * R]`) -> `((x @ A) * mask) @ B`,
    `[batch, seq, nf]`."""
    a, b, mask = rows
    xa = tf.matmul(x, tf.cast(a, x.dtype))  # [batch, seq, P * R]: every adapter's
    return tf.matmul(xa * tf.cast(mask, x.dtype)[:, None, :], tf.cast(b, x.dtype))  # only the row's own adds up


def _parent(block, target):
    """(the module holding `target` in a block, its attribute): 'c_fc' -> (block.mlp, 'c_fc')."""
    part, leaf = LAYER_PATHS[target].split("/")
    return getattr(block, part), leaf


def enable_lora(model, rank, *, alpha=None, targets=None, base_precision=None, seed=None):
    """Freeze `model`'s weights and add trainable rank-`rank` adapters to the `targets` layers.

    Args:
        model: a `GPT2` without adapters.
        rank: r, the rank of each update `scale * A @ B` (8 is a common choice).
        alpha: scale = alpha / rank; None means alpha = rank (scale 1).
        targets: names from `TARGETS` (`c_attn`, `attn/c_proj`, `c_fc`, `mlp/c_proj`); None: all.
        base_precision: 'bfloat16' or 'float16' store the frozen weights in 16 bits (half the
            memory; compute still happens in the dtype of the activations); 'float32' or None
            keeps them as they are.
        seed: seed of A's random initialisation.

    Returns:
        `model`, whose `.lora` is the `LoRAConfig` and `.lora_weights` the adapters by name
        (`model/h0/attn/c_attn/lora_A`, `model/h0/mlp/c_fc/lora_B`, ...). Until the adapters train, its logits equal the
        base model's exactly.

    Raises:
        ValueError: bad settings, a rank above a targeted matrix's smaller side, or a model that
            already has adapters.
    """
    config = check_settings(rank, alpha, targets)
    if model.lora is not None:
        raise ValueError("this model already has LoRA adapters; call merge_lora(model) before enabling new ones")
    e = model.hparams.n_embd
    shapes = [getattr(*_parent(model.h[0], t)).w.shape for t in config.targets] if model.h else []
    limit = min(min(shape) for shape in shapes) if shapes else e
    if config.rank > limit:
        raise ValueError(f"rank={config.rank} is larger than the targeted matrices allow (at most {limit} for "
                         f"n_embd={e}); pass a smaller rank such as 8")
    freeze(model, None if base_precision is None else base_dtype(base_precision))
    rng = np.random.default_rng(seed)
    model.lora_weights = {}
    for i, block in enumerate(model.h):
        for target in config.targets:
            parent, leaf = _parent(block, target)
            adapter = LoRAConv1D(getattr(parent, leaf), config.rank, config.scale, rng)
            setattr(parent, leaf, adapter)
            model.lora_weights[f"model/h{i}/{LAYER_PATHS[target]}/lora_A"] = adapter.lora_A
            model.lora_weights[f"model/h{i}/{LAYER_PATHS[target]}/lora_B"] = adapter.lora_B
    model.lora = config
    return model


def adapters(model):
    """`{weight name: LoRAConv1D}` of a model's adapted layers (`model/h0/attn/c_attn/w`: ...); {} without."""
    if model.lora is None:
        return {}
    found = {}
    for i, block in enumerate(model.h):
        for target in model.lora.targets:
            parent, leaf = _parent(block, target)
            found[f"model/h{i}/{LAYER_PATHS[target]}/w"] = getattr(parent, leaf)
    return found


def merged_weights(model):
    """`{name: float32 tensor}` in `model.weights` order and shapes, with the adapters folded in.

    A float32 weight without an adapter is returned as the variable itself.
    """
    adapted = adapters(model)
    return {name: merged_weight(model, name, adapted) for name in model.weights}


def merged_weight(model, name, adapted=None):
    """One weight as float32 with its adapter folded in (`adapted`: `adapters(model)`, computed once by a caller
    that asks for many); a float32 weight without an adapter is the variable itself."""
    adapted = adapters(model) if adapted is None else adapted
    var = model.weights[name]
    value = var if var.dtype == tf.float32 else tf.cast(var, tf.float32)
    return value + adapted[name].delta() if name in adapted else value


def merge_lora(model):
    """Fold the adapters into the weights (`W <- W + scale * A @ B`) and remove them.

    The sum is taken in float32 and stored in the weight's own dtype (rounded for a 16-bit
    base); the weights stay frozen. Returns `model` (a model without adapters is unchanged).
    """
    for name, adapter in adapters(model).items():
        adapter.base.w.assign(tf.cast(tf.cast(adapter.base.w, tf.float32) + adapter.delta(), adapter.base.w.dtype))
    for block in model.h:
        for target in (model.lora.targets if model.lora is not None else ()):
            parent, leaf = _parent(block, target)
            setattr(parent, leaf, getattr(parent, leaf).base)
    model.lora, model.lora_weights = None, {}
    return model

"""Hugging Face peft's LoRA adapter folder, both ways: `adapter_config.json` + `adapter_model.safetensors`.

This module owns the rule between our adapters and peft's for GPT-2: our `A [nx, r]` and
`B [r, nf]` of `model/h0/attn/c_attn` are peft's
`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight` `[r, nx]` and `lora_B.weight`
`[nf, r]` (transposed: peft's adapters are `nn.Linear` layers), with the same scale
`lora_alpha / r`. `write_peft_folder` writes a model's adapters so that
`PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), folder)` computes our logits;
`load_peft_folder` puts a peft GPT-2 LoRA folder onto a model here. Only plain LoRA is read: no
DoRA, no per-layer ranks, no trained biases or extra modules (each refused in one line).
"""
import json
import os
import re

from ..atomic import write_text
from ..model.lora import TARGETS
from .adapters import apply_adapters
from .safetensors_file import SafeTensors, write_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Our target names <-> peft's `target_modules` (module-name suffixes of GPT2LMHeadModel).
PEFT_MODULES = {"c_attn": "attn.c_attn", "attn/c_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp/c_proj": "mlp.c_proj"}
_KEY = re.compile(r"^(?:base_model\.model\.)?transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                  r"\.lora_([AB])(?:\.default)?\.weight$")
# Options that change what the adapters compute and that this reader does not implement.
_UNSUPPORTED = {"use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                "layers_to_transform": None, "lora_bias": False}


def peft_key(name):
    """peft's tensor name of an adapter: `model/h0/attn/c_attn/lora_A` -> `base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`."""
    _, layer, *path, leaf = name.split("/")
    module = ".".join(path)  # model/h0/mlp/c_fc/lora_A -> mlp.c_fc
    return f"base_model.model.transformer.h.{layer[1:]}.{module}.{leaf}.weight"


def write_peft_folder(model, folder, base_model_name_or_path=None):
    """Write `model`'s adapters into `folder` (which must exist) in peft's format."""
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": model.lora.rank, "lora_alpha": model.lora.alpha,
        "target_modules": [PEFT_MODULES[t] for t in model.lora.targets], "fan_in_fan_out": True,
        "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path,
    }
    tensors = {peft_key(name): var.numpy().T for name, var in model.lora_weights.items()}
    write_safetensors(os.path.join(folder, WEIGHTS_FILE), tensors)
    write_text(os.path.join(folder, CONFIG_FILE), json.dumps(config, indent=2) + "\n")


def load_peft_folder(model, folder):
    """Put the LoRA adapters of peft folder `folder` onto `model` (applied on the fly); returns `model`.

    Raises:
        FileNotFoundError: no adapter_config.json or adapter_model.safetensors.
        ValueError: not a LoRA adapter of GPT-2, an option this reader does not implement, or
            adapters shaped for another model.
    """
    paths = [os.path.join(folder, name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found; a peft adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    with open(paths[0], encoding="utf-8") as f:
        try:
            config = json.load(f)
        except ValueError as e:
            raise ValueError(f"{paths[0]} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise ValueError(f"{paths[0]} is not a LoRA adapter (peft_type={config.get('peft_type')!r}, need 'LORA')")
    odd = [f"{k}={config[k]!r}" for k, plain in _UNSUPPORTED.items() if config.get(k, plain) not in (plain, None, {})]
    if config.get("bias", "none") != "none":
        odd.append(f"bias={config['bias']!r}")
    if odd:
        raise ValueError(f"{paths[0]} uses peft options gpt2_simple does not compute: {', '.join(odd)}; "
                         "export plain LoRA adapters (one rank, bias='none')")
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if config.get("use_rslora"):
        alpha = alpha * rank ** 0.5  # rsLoRA's scale alpha / sqrt(r), as alpha' / r
    tensors = SafeTensors(paths[1])
    arrays, modules = {}, set()
    for key in tensors.shapes:
        match = _KEY.match(key)
        if not match:
            raise ValueError(f"{paths[1]} holds {key}, which is not a LoRA adapter of a GPT-2 layer")
        layer, module, leaf = match.groups()
        target = next(t for t, m in PEFT_MODULES.items() if m == module)
        modules.add(target)
        arrays[f"model/h{layer}/{module.replace('.', '/')}/lora_{leaf}"] = tensors.read(key).T
    targets = [t for t in TARGETS if t in modules]
    settings = {"rank": rank, "alpha": alpha, "targets": targets}
    return apply_adapters(model, settings, arrays, source=paths[1])

"""What makes an exported folder a complete model repository: the tokenizer's and generation's configs, and a card.

This module owns the files `export_hf` writes beside the weights and the vocabulary, so that the
folder works as it is in transformers, vLLM or on the Hugging Face Hub: `tokenizer_config.json`
(GPT-2's tokenizer class, its special tokens, context and chat template), `generation_config.json` (end-of-text
ends a text) and `README.md`, a model card whose YAML says what the model is (`base_model`,
`base_model_relation`, `license`, `pipeline_tag`, `library_name`, `tags`) and whose body says how
it was made, from what the run folder records (`run_record.py`): the base model, the dataset and
settings, the steps, and the validation losses. The weights are `hf.py`'s and `peft.py`'s.
"""
import json
import os

from ..atomic import write_text
from . import chat_template, hub, run_record
from . import checkpoint as checkpoint_files

EOT = "<|endoftext|>"
EOT_ID = 50256
# The Hub ids of OpenAI's released sizes, as a model folder or a run's base model folder names them.
OPENAI_IDS = {"124M": "openai-community/gpt2", "355M": "openai-community/gpt2-medium",
              "774M": "openai-community/gpt2-large", "1558M": "openai-community/gpt2-xl"}


def write_repository_files(folder, source, hparams, *, adapter=False):
    """Write `tokenizer_config.json`, `generation_config.json` (not for an adapter) and `README.md` into `folder`,
    and the run's `chat_template.jinja` (also in `tokenizer_config.json`) when it has one.

    Args:
        folder: the folder being exported (its weights are written by the caller).
        source: the run or model folder it comes from, whose records fill the card.
        hparams: the model's `HParams`.
        adapter: the folder is a peft adapter repository (the card's relation is `adapter`).
    """
    template = chat_template.read_run_template(source)
    config = tokenizer_config(hparams.n_ctx)
    if template is not None:  # the run's template travels with it, in both places readers look
        chat_template.write_run_template(folder, template)
        config["chat_template"] = template
    write_text(os.path.join(folder, "tokenizer_config.json"), json.dumps(config, indent=2) + "\n")
    if not adapter:
        write_text(os.path.join(folder, "generation_config.json"),
                   json.dumps({"bos_token_id": EOT_ID, "eos_token_id": EOT_ID}, indent=2) + "\n")
    write_text(os.path.join(folder, "README.md"), card(source, hparams, adapter=adapter))


def tokenizer_config(n_ctx):
    """GPT-2's tokenizer settings, as transformers' `AutoTokenizer` reads them (`vocab.json`, `merges.txt` beside)."""
    return {"tokenizer_class": "GPT2Tokenizer", "bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
            "pad_token": None, "add_prefix_space": False, "model_max_length": n_ctx,
            "clean_up_tokenization_spaces": False}


def base_model_id(folder):
    """The Hub id of a base model folder: OpenAI's sizes by their folder names, a pulled one's own id
    (`hub.repo_id_of`); None for any other."""
    if not folder:
        return None
    return OPENAI_IDS.get(os.path.basename(os.path.normpath(folder))) or hub.repo_id_of(folder)


def card(source, hparams, *, adapter=False):
    """The model card (`README.md`): YAML metadata, then how the model was made."""
    training = run_record.read_training(source)
    base = training.get("base_model") if training else None
    base_id = base_model_id(base) if training else None
    meta = {"library_name": "peft" if adapter else "transformers", "license": "mit",
            "pipeline_tag": "text-generation", "tags": ["gpt2", "gpt2_simple", "text-generation"]}
    if base_id:
        meta.update(base_model=base_id, base_model_relation="adapter" if adapter else "finetune")
    size = base_model_id(source) or f"{hparams.n_layer} layers of width {hparams.n_embd}"
    title = os.path.basename(os.path.normpath(source)) if training else f"GPT-2 ({size})"
    lines = ["---"] + _yaml(meta) + ["---", "", f"# {title}", ""]
    if training is None:  # a model folder: the card depends on the weights' shape only
        lines += [f"GPT-2 ({size}), exported by [gpt2_simple](https://pypi.org/project/gpt2_simple/).", ""]
    else:
        lines += _training_section(source, training, base, base_id)
    lines += ["## Use", "", "```python", "from transformers import pipeline", "",
              'generator = pipeline("text-generation", model="path/to/this/folder")  # or its Hub id',
              'print(generator("Once upon a time", max_new_tokens=40)[0]["generated_text"])', "```", ""]
    return "\n".join(lines)


def _training_section(run_dir, training, base, base_id):
    """The card's account of a run: base model, data, settings, steps and validation losses."""
    states = checkpoint_files.read_state(run_dir)
    step = checkpoint_files.step_of(states[-1]) if states else None
    best = run_record.read_best(run_dir)
    dataset = os.path.basename(str(training.get("dataset") or "")) or "its dataset"
    mode = " in documents mode (one document per line or record)" if training.get("line_by_line") else ""
    made = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{os.path.basename(str(base))}`"
    lines = [f"GPT-2 fine-tuned from {made} on `{dataset}`{mode} with "
             "[gpt2_simple](https://pypi.org/project/gpt2_simple/).", "", "## Training", "",
             "| setting | value |", "|---|---|"]
    settings = dict(training.get("settings") or {}, steps=step)
    lines += [f"| {key} | {value} |" for key, value in settings.items() if value is not None]
    lines.append("")
    losses = run_record.read_val_losses(run_dir)
    if losses:
        lines += [f"Validation loss: {losses[-1][1]:.4f} nats per token at step {losses[-1][0]} (the last)."]
    if best:
        lines += [f"Best validation loss: {best['val_loss']:.4f} at step {best['step']}."]
    return lines + ([""] if losses or best else []) + _evaluation_section(run_dir) + _copies_section(run_dir)


def _copies_section(run_dir):
    """The run's last copy check (`generate(check_copies=True)`), or nothing."""
    check = run_record.read_copies(run_dir)
    if not check:
        return []
    line = (f"The last copy check (`generate(check_copies=True)`) read {check['samples']} sample(s): "
            f"{check['copied']} share {check['span']} or more tokens in a row with the training text, the "
            f"longest {check['longest']} tokens.")
    if check.get("threshold") is not None:
        line += f" {check['dropped']} were dropped at copy_threshold={check['threshold']}."
    return ["## Copies of the training text", "", line, ""]


def _evaluation_section(run_dir):
    """The run's last `evaluate` table (held-out loss per model), or nothing."""
    evaluation = run_record.read_evaluation(run_dir)
    if not evaluation:
        return []
    lines = ["## Evaluation", "", f"Held-out `{evaluation['dataset']}`, scored by `gpt2_simple evaluate` (nats per "
             "token; bits per byte compare across tokenizers):", "",
             "| model | step | loss | perplexity | bits per byte | tokens |", "|---|---|---|---|---|---|"]
    for r in evaluation["rows"]:
        step = "" if r["step"] is None else r["step"]
        lines.append(f"| {r['model']} | {step} | {r['loss']:.4f} | {r['perplexity']:.2f} | "
                     f"{r['bits_per_byte']:.4f} | {r['tokens']} |")
    return lines + [""]


def _yaml(meta):
    """Flat YAML of strings and lists of strings, quoted where YAML would read them otherwise."""
    out = []
    for key, value in meta.items():
        if isinstance(value, list):
            out += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
        else:
            out.append(f"{key}: {json.dumps(value)}")
    return out

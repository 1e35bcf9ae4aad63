"""Loading a model into a session and generating text: gpt-2-simple's `load_gpt2` and `generate`.

This module owns gpt-2-simple's side of generation: choosing the folder (a run or a pretrained
model), calling the compiled sampler in batches for a call prepared by `call.py` (which checks
the options, encodes the prefix and settles each sample's text), and printing, returning or
writing the texts with gpt-2-simple's formatting. The sampling loop itself is `sample.py`'s.

Differences from gpt-2-simple 0.8.1, each one of its reported failures:
- the sampler is compiled once per loaded model, so repeated calls neither slow down nor leak;
- `length` may exceed the model's context (a sliding window continues the text);
- with `truncate`, sampling stops as soon as every text in the batch contains it;
- `include_prefix=False` removes the prefix with or without `truncate`;
- `load_gpt2` returns the session, so `sess = gpt2.load_gpt2(sess)` also works;
- a run trained on documents (`line_by_line=True`, recorded in its `documents.json`) gives one
  document per sample: the end-of-text id comes first, before any prefix, and each sample ends
  at the next end-of-text (or after `length` tokens).
"""
import sys

import numpy as np

from encoder import get_encoder

from ..formats import run_record
from ..formats.folders import load_model
from ..formats.hub import model_folder
from ..model.names import run_folder
from .call import prepare
from .copies import SampleMarks
from .draws import batch_seed

DEFAULT_DELIM = "=" * 20 + "\n"


def load_gpt2(sess, checkpoint="latest", run_name="run1", checkpoint_dir="checkpoint", model_name=None,
              model_dir="models", multi_gpu=False, reuse=False):
    """Load a fine-tuned run (or, with `model_name`, a pretrained model) into `sess`.

    Args:
        sess: a `Session` from `start_tf_sess()`.
        checkpoint: 'latest' or a checkpoint name in the folder, e.g. 'model-1000'; 'best' is
            the lowest validation loss of a run trained with keep_best=True.
        run_name: the fine-tuned run to load, from the folder `checkpoint_dir/run_name`.
        checkpoint_dir: the parent folder of the run folders.
        model_name: if set, load the pretrained model `model_dir/model_name` instead of a run
            (or `hf://ORG/NAME`, a GPT-2 on the Hugging Face Hub).
        model_dir: the parent folder of the model folders.
        multi_gpu, reuse: accepted for compatibility; they have no effect in TF2.

    Returns:
        `sess` (gpt-2-simple returned None).
    """
    folder = model_folder(model_dir, model_name) if model_name else run_folder(checkpoint_dir, run_name)
    model = load_model(folder, checkpoint)
    label = "Loading pretrained model" if model_name else "Loading checkpoint"
    print(label, model.checkpoint_path)
    sess.set_model(model, get_encoder(folder), folder)
    return sess


def generate(sess, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models",
             sample_dir="samples", return_as_list=False, truncate=None, destination_path=None,
             sample_delim=DEFAULT_DELIM, prefix=None, seed=None, nsamples=1, batch_size=1, length=1023,
             temperature=0.7, top_k=0, top_p=0.0, include_prefix=True, *, stop=None, repetition_penalty=1.0,
             check_copies=False, copy_threshold=None, training_data=None, presence_penalty=0.0,
             frequency_penalty=0.0, logit_bias=None, min_p=0.0, avoid_copies=0, messages=None):
    """Generate texts with the model loaded in `sess` (gpt-2-simple's signature and defaults).

    Args:
        sess: a `Session` holding a model (`load_gpt2` or `finetune` put it there).
        run_name, checkpoint_dir, model_name, model_dir: accepted for compatibility; the
            session's own model and encoder are used.
        sample_dir: unused, as in gpt-2-simple.
        return_as_list: return the texts instead of printing them.
        truncate: cut each text at the first occurrence of this string; sampling stops early
            once every text of a batch contains it.
        destination_path: write the texts to this UTF-8 file instead of printing them.
        sample_delim: written after each text (empty when nsamples == 1, as upstream).
        prefix: the prompt; None or '' starts from `<|endoftext|>`.
        seed: int for reproducible texts.
        nsamples: number of texts; a multiple of `batch_size`.
        batch_size: texts generated in parallel.
        length: tokens to generate after the prefix. May exceed the model's context
            (gpt-2-simple capped it at 1023 minus the prefix's tokens).
        temperature: > 0; lower is more conservative.
        top_k: sample from the k most likely tokens (0: all).
        top_p: nucleus sampling threshold in (0, 1]; when > 0 it replaces top_k.
        include_prefix: False removes the prefix from each text.
        stop: a string or a list of up to 8 strings; each text ends at the first occurrence of
            any of them, which is removed (as `truncate` is), and its sampling stops there.
        repetition_penalty: > 0; the CTRL rule on tokens already in the text (positive logits
            divided by it, negative ones multiplied); 1.2 is typical, 1.0 turns it off.
        check_copies: mark each text with the longest span it shares verbatim with the run's
            training text (`[copied: 23 of 40 tokens from line 1812]`); see `copy_threshold`.
        copy_threshold: drop the texts that share this many tokens or more with the training
            text (an int >= 8; turns `check_copies` on).
        training_data: the text file the run was trained on, for the copy check and the guard,
            when the run folder does not record it (runs older than `training.json`).
        avoid_copies: N from 1 to 64: never draw the token that would make the text's last N + 1
            tokens (prefix included) a span of the training text, so no sample shares more than
            N tokens with it (0: off). Checked inside the compiled loop.
        presence_penalty: OpenAI's additive penalty: subtracted once from the logit of every
            token already drawn in this sample (the prefix does not count); 0.0 turns it off.
        frequency_penalty: OpenAI's additive penalty: each token's logit minus this times its
            draws so far in this sample (the prefix does not count); 0.0 turns it off.
        logit_bias: {token id: bias} added to those logits (-100 bans a token, +100 forces it).
        min_p: in [0, 1]; drop tokens less likely than min_p times the likeliest (0.0: off).
        messages: a conversation ([{"role", "content"}, ...]) to answer instead of a prefix: it is
            rendered by the run's chat template and each text is the assistant's reply, ended at
            end-of-text (docs/chat.md).

    Returns:
        The list of texts if `return_as_list`, else None.

    Raises:
        ValueError: invalid options (the message names the argument and the fix).
    """
    call = prepare(sess, prefix, length=length, temperature=temperature, top_k=top_k, top_p=top_p, truncate=truncate,
                   include_prefix=include_prefix, stop=stop, repetition_penalty=repetition_penalty,
                   presence_penalty=presence_penalty, frequency_penalty=frequency_penalty, logit_bias=logit_bias,
                   min_p=min_p, avoid_copies=avoid_copies, training_data=training_data, nsamples=nsamples,
                   batch_size=batch_size, messages=messages)
    if nsamples == 1:
        sample_delim = ""
    ended = call.ended if call.may_end_early() else None
    marks = SampleMarks(sess.copy_index(training_data), call.enc, copy_threshold) if check_copies or copy_threshold \
        else None
    texts = []
    out_file = open(destination_path, "w", encoding="utf-8") if destination_path else None
    try:
        for b in range(nsamples // batch_size):
            tokens = sess.sampler.sample(
                np.tile(np.asarray(call.context, np.int32), (batch_size, 1)), length, seed=batch_seed(seed, b),
                chunk=(16 if call.stops or call.eot is not None else 64) if ended else None, stop=ended,
                options=call.options, guard=call.guard)
            for row in tokens:
                text = call.settle(row).text
                if marks and (text := marks.mark(text, call.prefix)) is None:
                    continue  # a copy, dropped
                shown = f"{text}\n[{text.copy.mark()}]" if check_copies else text
                if out_file:
                    out_file.write(f"{shown}\n{sample_delim}")
                elif not return_as_list:
                    print(f"{shown}\n{sample_delim}", end="")
                texts.append(text)
    finally:
        if out_file:
            out_file.close()
    if marks and marks.report():
        print(marks.report(), file=sys.stderr)
    if marks and run_record.read_training(sess.folder) is not None:  # a run's last check goes into its card
        run_record.record_copies(sess.folder, marks.summary())
    return texts if return_as_list else None


def generate_to_file(sess, run_name="run1", checkpoint_dir="checkpoint", model_name=None, model_dir="models",
                     truncate=None, destination_path="gpt_2_gen_texts.txt", sample_delim=DEFAULT_DELIM,
                     prefix=None, seed=None, nsamples=1, batch_size=1, length=1023, temperature=0.7, top_k=0,
                     top_p=0.0, include_prefix=True, *, stop=None, repetition_penalty=1.0, check_copies=False,
                     copy_threshold=None, training_data=None, presence_penalty=0.0, frequency_penalty=0.0,
                     logit_bias=None, min_p=0.0, avoid_copies=0):
    """`generate(...)` writing to `destination_path` (gpt-2-simple's signature and defaults)."""
    return generate(
        sess, run_name=run_name, checkpoint_dir=checkpoint_dir, model_name=model_name, model_dir=model_dir,
        return_as_list=False, truncate=truncate, destination_path=destination_path, sample_delim=sample_delim,
        prefix=prefix, seed=seed, nsamples=nsamples, batch_size=batch_size, length=length,
        temperature=temperature, top_k=top_k, top_p=top_p, include_prefix=include_prefix, stop=stop,
        repetition_penalty=repetition_penalty, check_copies=check_copies, copy_threshold=copy_threshold,
        training_data=training_data, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
        logit_bias=logit_bias, min_p=min_p, avoid_copies=avoid_copies,
    )

"""Loading a model into a session and generating text: gpt-2-simple's `load_gpt2` and `generate`.

This module owns the text side of generation: choosing the folder (a run or a pretrained
model), encoding the prefix, calling the compiled sampler in batches, decoding, truncating,
stripping the prefix, and printing, returning or writing the texts with gpt-2-simple's
formatting. The sampling loop itself is `sample.py`'s.

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
import re
import sys

import numpy as np

from encoder import get_encoder

from ..formats.folders import load_model
from ..formats.run_record import read_documents
from ..model.names import model_folder, run_folder
from .copies import SampleMarks
from .copy_guard import check_span
from .draws import batch_seed
from .options import MAX_STOPS, SamplingOptions, bias_vector
from .stop_strings import StopStrings

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
        model_name: if set, load the pretrained model `model_dir/model_name` instead of a run.
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
             frequency_penalty=0.0, logit_bias=None, min_p=0.0, avoid_copies=0):
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

    Returns:
        The list of texts if `return_as_list`, else None.

    Raises:
        ValueError: invalid options (the message names the argument and the fix).
    """
    enc = sess.encoder
    sampler = sess.sampler  # raises if no model is loaded
    n_ctx = sess.model.hparams.n_ctx
    prefix = prefix or None
    prompt = enc.encode(prefix) if prefix else []
    eot = enc.eot_token if read_documents(sess.folder) else None  # documents: one per sample
    context = prompt if prompt and eot is None else [enc.eot_token] + prompt
    check_options(nsamples, batch_size, length, temperature, top_k, top_p)
    if len(context) >= n_ctx:
        raise ValueError(f"prefix is {len(context)} tokens but the model's context is n_ctx={n_ctx}; "
                         f"shorten the prefix below {n_ctx} tokens")
    _check_penalty(repetition_penalty)
    adjust = check_adjustments(presence_penalty, frequency_penalty, logit_bias, min_p, sess.model.hparams.n_vocab)
    guard = sess.copy_guard(avoid_copies, training_data) if check_span(avoid_copies) else None
    stops = StopStrings(stop)
    if nsamples == 1:
        sample_delim = ""
    ended = _rows_ended(enc, truncate, stops, eot) if truncate or stops or eot is not None else None
    stop_tokens = stops.tokens(enc)
    if eot is not None and len(stop_tokens) < MAX_STOPS:
        stop_tokens.append([eot])  # the compiled loop ends a row at its end-of-text

    options = SamplingOptions.make(temperature=temperature, top_k=top_k, top_p=top_p,
                                   repetition_penalty=repetition_penalty, stop_tokens=stop_tokens,
                                   avoid_copies=avoid_copies, **adjust)
    marks = SampleMarks(sess.copy_index(training_data), enc, copy_threshold) if check_copies or copy_threshold else None
    texts = []
    out_file = open(destination_path, "w", encoding="utf-8") if destination_path else None
    try:
        for b in range(nsamples // batch_size):
            tokens = sampler.sample(
                np.tile(np.asarray(context, np.int32), (batch_size, 1)), length, seed=batch_seed(seed, b),
                chunk=(16 if stops or eot is not None else 64) if ended else None, stop=ended, options=options,
                guard=guard)
            for row in tokens:
                text = _finish(enc, prompt, _until(row, eot), prefix, truncate, include_prefix, stops)
                if marks and (text := marks.mark(text, prefix)) is None:
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


def check_options(nsamples, batch_size, length, temperature, top_k, top_p):
    """Raise a one-line ValueError for options `generate` cannot take (before any model is loaded)."""
    checks = [
        (isinstance(batch_size, int) and batch_size > 0, f"batch_size={batch_size!r} must be a positive integer"),
        (isinstance(nsamples, int) and nsamples > 0, f"nsamples={nsamples!r} must be a positive integer"),
        (not (isinstance(nsamples, int) and isinstance(batch_size, int) and batch_size > 0
              and nsamples % batch_size), f"nsamples={nsamples} is not divisible by batch_size={batch_size}; "
         f"pass a multiple of it such as nsamples={batch_size * max(1, round(nsamples / batch_size))}"
         if isinstance(nsamples, int) and isinstance(batch_size, int) and batch_size > 0 else ""),
        (isinstance(length, int) and length > 0, f"length={length!r} must be a positive number of tokens"),
        (temperature > 0, f"temperature={temperature!r} must be > 0 (0.7 is a good start)"),
        (isinstance(top_k, int) and top_k >= 0, f"top_k={top_k!r} must be an integer >= 0 (0 turns it off)"),
        (0.0 <= top_p <= 1.0, f"top_p={top_p!r} must be in [0, 1] (0 turns it off; 0.9 is typical)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def check_adjustments(presence_penalty, frequency_penalty, logit_bias, min_p, n_vocab):
    """The sampler's keyword arguments for OpenAI's penalties, logit_bias and min_p; ValueError naming a bad one."""
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not (isinstance(value, (int, float)) and np.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a finite number (0.0 turns it off; OpenAI allows -2 to 2)")
    if not (isinstance(min_p, (int, float)) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p={min_p!r} must be in [0, 1] (0.0 turns it off; 0.05 is typical)")
    if logit_bias is not None and not isinstance(logit_bias, dict):
        raise ValueError(f"logit_bias={logit_bias!r} must be a dict {{token id: bias}} or None")
    bias_vector(logit_bias, n_vocab)  # raises naming an id out of range
    return {"presence_penalty": float(presence_penalty), "frequency_penalty": float(frequency_penalty),
            "logit_bias": dict(logit_bias or {}), "min_p": float(min_p)}


def _check_penalty(repetition_penalty):
    if not (isinstance(repetition_penalty, (int, float)) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty={repetition_penalty!r} must be a number > 0 (1.0 turns it off; "
                         "1.2 is typical)")


def _rows_ended(enc, truncate, stops, eot=None):
    """The sampler's `stop`: a row has ended once it holds `eot` (documents), `truncate` or a stop string."""
    def ended(tokens):
        return [(eot is not None and eot in row) or _text_ended(enc.decode(list(row)), truncate, stops)
                for row in tokens]

    return ended


def _text_ended(text, truncate, stops):
    return bool(truncate and truncate in text) or stops.find(text) >= 0


def _until(row, eot):
    """The tokens of a sample up to (without) the first `eot`; all of them when `eot` is None."""
    row = list(row)
    return row[: row.index(eot)] if eot is not None and eot in row else row


def _finish(enc, context, new, prefix, truncate, include_prefix, stops=None):
    """Decode one sample and apply the stop strings, then gpt-2-simple's truncate / include_prefix / lstrip rules."""
    text = enc.decode(list(context) + list(new)) if prefix else enc.decode(new)
    if stops:
        has_prefix = prefix and text.startswith(prefix)
        body = stops.cut(text[len(prefix):] if has_prefix else text)
        text = prefix + body if has_prefix else body
    if truncate:
        body = text[len(prefix):] if prefix and text.startswith(prefix) else text
        cut = re.search(f"(.*?)(?:{re.escape(truncate)})", body, re.S)
        body = cut.group(1) if cut else body
        text = prefix + body if prefix and text.startswith(prefix) else body
    if prefix and not include_prefix and text.startswith(prefix):
        text = text[len(prefix):]
    return text.lstrip("\n")

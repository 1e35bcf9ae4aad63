"""The `packing` section of benchmark.py: fine-tuning on 16,000 tweet-length records, packed and one a row.

The records are prompt/completion pairs of `sample_text` (a short prompt, a completion of 5 to 40
words), written as a `.jsonl` and read as `finetune` reads it (`chats.load_examples`, the built-in
template). A random-weight model (`--model`) trains on them with the compiled step `finetune`
builds for structured examples: one example a row (the window is the longest record, so
shorter ones are padding) at batch 1 and 16, and packed at batch 1 (several records to a window
of the context, each attending only to itself). Each way is timed over `STEPS` steps after a warm-up step, and
reported as record tokens per second (padding left out), trained tokens per second and records
per second, with the share of each window that is padding.
"""
import json
import os
import tempfile

import numpy as np

RECORDS, STEPS = 16000, 3
# (name, packed, rows a step): one record a row at batch 1 (finetune's default batch) and at batch 16
# (about as many token slots as one packed window), and packed to the context at batch 1.
WAYS = (("one_a_row", False, 1), ("one_a_row_batch16", False, 16), ("packed", True, 1))


def bench_packing(args, timed, sample_text):
    """{name: value} for one-a-row and packed; prints one line for each as it goes."""
    import tensorflow as tf

    from encoder import get_encoder
    from gpt2_simple.formats.chat_template import ChatTemplate
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2
    from gpt2_simple.training import chats
    from gpt2_simple.training.optimizer import make_optimizer
    from gpt2_simple.training.packing import ExampleSampler
    from gpt2_simple.training.step import compile_train_step

    vocab = args.vocab_dir
    enc = get_encoder(vocab)
    examples = chats.load_examples(enc, _records(sample_text(enc, 2.0), os.path.join(args.tmp, "tweets.jsonl")),
                                   ChatTemplate())
    model = GPT2(PRESETS[args.model], seed=0)
    names = list(model.weights)
    opt = make_optimizer("adam", {n: model.weights[n] for n in names}, 1e-4)
    step = compile_train_step(model, opt, names, strategy=tf.distribute.get_strategy(), examples=True)
    result = {"records": len(examples), "mean_record_tokens": float(np.mean([len(t) for t in examples.tokens]))}
    for name, pack, batch in WAYS:
        sampler = ExampleSampler(examples, seed=0, pack=pack, eot=enc.eot_token)
        window = min(model.hparams.n_ctx, sampler.longest)
        batches = [sampler.sample_batch(batch, window)[None] for _ in range(STEPS + 1)]
        step(tf.constant(batches[0])).numpy()  # compile this shape
        seconds = timed(lambda: [step(tf.constant(b)).numpy() for b in batches[1:]], repeat=1) / STEPS
        rows = np.concatenate([b[0] for b in batches[1:]])  # [steps * batch, 4, window]
        real = float((rows[:, 2] > 0).sum()) / STEPS
        records = float(sum(len(set(r[2].tolist()) - {0}) for r in rows)) / STEPS
        result.update({f"{name}_window": window, f"{name}_step_s": seconds,
                       f"{name}_record_tokens_per_s": real / seconds,
                       f"{name}_trained_tokens_per_s": float(rows[:, 1].sum()) / STEPS / seconds,
                       f"{name}_records_per_s": records / seconds,
                       f"{name}_padding_share": 1 - real / (batch * window)})
        print(f"packing: {name}: {batch} x {window} tokens, {real / seconds:.0f} record tokens/s, padding "
              f"{1 - real / (batch * window):.0%}", flush=True)
    for name, _, _ in WAYS[:2]:
        result[f"packed_vs_{name}_records_per_s"] = result["packed_records_per_s"] / result[f"{name}_records_per_s"]
    return result


def _records(text, path):
    """RECORDS prompt/completion pairs cut from `text`, written to `path` (JSON lines)."""
    rng = np.random.default_rng(1)
    words = text.split()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(RECORDS):
            at, n = int(rng.integers(len(words) - 50)), int(rng.integers(5, 40))
            f.write(json.dumps({"prompt": " ".join(words[at:at + 3]) + ":",
                                "completion": " " + " ".join(words[at + 3:at + 3 + n])}) + "\n")
    return path


def temporary_folder():
    return tempfile.mkdtemp(prefix="bench-packing-")

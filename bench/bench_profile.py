"""The `profile` section of benchmark.py: where one decoding step's time goes, part by part.

Each part is compiled with XLA alone, as the decoding loop compiles it, and timed over many calls
with the cores it keeps busy (process CPU time over wall time):
- `blocks`: the n_layer blocks' four matrix products (c_attn, c_proj, c_fc, mlp c_proj) chained
  as in a step, with the model's own weights in their stored `[nx, nf]` layout, and the same
  products as the XLA loop runs them (`model/columns.py`: matrices transposed to `[nf, nx]`,
  activations as columns `[features, batch]`), to see what the orientation costs XLA's dot;
- `output`: the final projection onto the vocabulary (`wte`, read along its rows, as the model does);
- `draw`: the filters and the Gumbel-max draw over the vocabulary (`draws._draw`), with top_k 40;
- `step`: the whole forward pass of one token at position 128 over a 256-position cache, by
  `GPT2.forward` and by the XLA loop's `columns.step` (here its cache writes copy the cache, which
  the loop writes in place).
The weights' bytes over each part's time is the bandwidth it reaches (compare `limits`).
"""
import numpy as np

CALLS = 30


def _part(fn, args, timed, measured):
    """(ms per call, cores busy) of `fn(*args)`, compiled by XLA, over CALLS calls after one that compiles."""
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True, autograph=False)
    compiled(*args)

    def run():
        for _ in range(CALLS):
            out = compiled(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)

    seconds, cores = measured(run, repeat=2)
    return seconds / CALLS * 1e3, cores


def bench_profile(args, timed, measured):
    """{name: value} per batch size in `args.batches`; prints one line per part as it goes."""
    import tensorflow as tf

    from gpt2_simple.generation.draws import _draw, row_seeds
    from gpt2_simple.model import columns
    from gpt2_simple.model.hparams import PRESETS
    from gpt2_simple.model.model import GPT2

    model = GPT2(PRESETS[args.model], seed=0)
    hp = model.hparams
    matrices = [m for block in model.h for m in (block.attn.c_attn.w, block.attn.c_proj.w, block.mlp.c_fc.w,
                                                 block.mlp.c_proj.w)]
    transposed_blocks = [tuple(tf.Variable(m) for m in ms) for ms in columns.block_matrices(model)]
    transposed = [m for ms in transposed_blocks for m in ms]
    block_mb = sum(m.shape.num_elements() for m in matrices) * 4 / 1e6
    wte_mb = model.wte.shape.num_elements() * 4 / 1e6

    def blocks(x):  # each product's output feeds the next (cut or tiled to its width): nothing is skipped
        for m in matrices:
            x = tf.tanh(_fit(x, m.shape[0]) @ m)
        return x

    def blocks_columns(x):
        x = tf.transpose(x)  # [features, batch]
        for m in transposed:
            x = tf.tanh(m @ _fit_rows(x, m.shape[1]))
        return x

    result = {}
    for batch in args.batches:
        x = tf.constant(np.random.default_rng(0).normal(size=(batch, hp.n_embd)).astype(np.float32))
        logits = tf.constant(np.random.default_rng(1).normal(size=(batch, hp.n_vocab)).astype(np.float32))
        cache = [tf.zeros([batch * hp.n_head, 256, hp.head_dim])] * hp.n_layer
        token = tf.zeros([batch, 1], tf.int32)
        seeds = tf.constant(row_seeds(1, batch))
        parts = {
            "blocks": (blocks, (x,), block_mb),
            "blocks_columns": (blocks_columns, (x,), block_mb),
            "output": (lambda x: tf.matmul(x, model.wte, transpose_b=True), (x,), wte_mb),
            "draw": (lambda l, k: _draw(l, 0, tf.constant(1.0), k, tf.constant(0.0), seeds, sort=True),
                     (logits, tf.constant(40)), 0.0),
            "step": (lambda t, k, v: model.forward(t, k, v, tf.constant(128))[0], (token, cache, cache),
                     block_mb + wte_mb),
            "step_columns": (lambda t, k, v: columns.step(model, transposed_blocks, t, k, v, tf.constant(128), None)[0],
                             (token, cache, cache), block_mb + wte_mb),
        }
        for name, (fn, inputs, mb) in parts.items():
            ms, cores = _part(fn, inputs, timed, measured)
            rate = f", {mb / ms:.1f} GB/s of weights" if mb else ""
            print(f"batch {batch}, {args.model}: {name} {ms:.2f} ms, {cores:.2f} cores busy{rate}", flush=True)
            result.update({f"batch{batch}_{name}_ms": ms, f"batch{batch}_{name}_cores_busy": cores})
            if mb:
                result[f"batch{batch}_{name}_gbps"] = mb / ms
    return result


def _fit(x, width):
    """`x` `[batch, w]` cut or tiled to `[batch, width]` (the widths here divide each other)."""
    import tensorflow as tf

    return x[:, :width] if x.shape[1] >= width else tf.tile(x, [1, width // x.shape[1]])


def _fit_rows(x, height):
    """`x` `[h, batch]` cut or tiled to `[height, batch]`: `_fit` for columns."""
    import tensorflow as tf

    return x[:height] if x.shape[0] >= height else tf.tile(x, [height // x.shape[0], 1])

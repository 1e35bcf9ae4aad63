"""Per-token log-probabilities: how likely the model finds each next token of a sequence.

This module owns the one computation behind every score: `log_softmax` of the model's raw
logits (before temperature, filters or penalties, as vLLM and llama.cpp report theirs), and the
log-probability of each token given the ones before it, optionally with the likeliest
alternatives at each position. Its callers: held-out scores (`training/evaluate.py`), OpenAI's
`logprobs` (`generation/scores.py`) and the gallery's mean log-probability (through the server).
"""
import tensorflow as tf


def token_logprobs(model, tokens, *, top=0, adapters=None):
    """Log-probabilities of `tokens` int32 `[batch, seq]`, each given those before it.

    Args:
        model: a `GPT2`.
        tokens: int32 `[batch, seq]`, seq >= 2. Right padding is harmless: no earlier position sees it.
        top: also return the `top` likeliest tokens at each position (0: only the chosen ones).
        adapters: None, or each row's LoRA adapter (`GPT2.forward`'s).

    Returns:
        float32 `[batch, seq - 1]` (position i scores `tokens[:, i + 1]`); with `top`, also the
        alternatives' log-probabilities and ids, each `[batch, seq - 1, min(top, n_vocab)]`.
    """
    logits = model.forward(tokens, adapters=adapters)[0]  # [batch, seq, n_vocab]
    logp = tf.nn.log_softmax(logits[:, :-1, :], axis=-1)  # [batch, seq - 1, n_vocab]: predicts tokens[:, 1:]
    chosen = tf.gather(logp, tokens[:, 1:], batch_dims=2)  # [batch, seq - 1]
    if not top:
        return chosen
    best = tf.math.top_k(logp, k=min(top, model.hparams.n_vocab))
    return chosen, best.values, best.indices

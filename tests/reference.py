"""An independent GPT-2 forward pass in plain NumPy, reading weights by their OpenAI names.

Written from the GPT-2 paper and OpenAI's released architecture, sharing no code with
gpt2_simple: float64 throughout, one position at a time is not needed since the causal mask is
applied explicitly.
"""
import numpy as np


def _layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def gpt2_logits(weights, tokens, n_head):
    """Logits `[batch, seq, n_vocab]` for int `tokens` `[batch, seq]`; `weights` maps OpenAI names to arrays."""
    w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    n_layer = len({k.split("/")[1] for k in w if k.startswith("model/h")})
    tokens = np.asarray(tokens)
    batch, seq = tokens.shape
    x = w["model/wte"][tokens] + w["model/wpe"][np.arange(seq)]
    d = x.shape[-1] // n_head
    causal = np.tril(np.ones((seq, seq), bool))
    for i in range(n_layer):
        p = f"model/h{i}/"
        h = _layer_norm(x, w[p + "ln_1/g"], w[p + "ln_1/b"])
        qkv = h @ w[p + "attn/c_attn/w"][0] + w[p + "attn/c_attn/b"]
        q, k, v = (t.reshape(batch, seq, n_head, d).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, -1))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        a = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, n_head * d)
        x = x + a @ w[p + "attn/c_proj/w"][0] + w[p + "attn/c_proj/b"]
        h = _layer_norm(x, w[p + "ln_2/g"], w[p + "ln_2/b"])
        h = _gelu(h @ w[p + "mlp/c_fc/w"][0] + w[p + "mlp/c_fc/b"])
        x = x + h @ w[p + "mlp/c_proj/w"][0] + w[p + "mlp/c_proj/b"]
    x = _layer_norm(x, w["model/ln_f/g"], w["model/ln_f/b"])
    return x @ w["model/wte"].T

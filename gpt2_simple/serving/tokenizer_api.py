"""The tokenizer over HTTP, in vLLM's shapes: `/tokenize`, `/detokenize` and `/tokenizer_info`.

This module owns those three bodies and answers (lm-evaluation-harness probes them to count
tokens without downloading a tokenizer). `/tokenize` takes vLLM's `{"prompt"}`, llama.cpp's
`{"content"}` or chat `{"messages"}` (rendered by the server's chat template); special tokens
such as `<|endoftext|>` are read as one id, as Hugging Face's GPT-2 tokenizer does.
"""
from . import openai_api as api


def tokenize(body, enc, n_ctx, template):
    """`POST /tokenize`: {"tokens", "count", "max_model_len"}."""
    if not isinstance(body, dict):
        raise api.APIError(400, "the request body must be a JSON object")
    if "messages" in body:
        from .openai_chat import messages_of

        text = template.render(messages_of(body), add_generation_prompt=body.get("add_generation_prompt", True))
    else:
        text = body.get("prompt", body.get("content"))
    if not isinstance(text, str):
        raise api.APIError(400, "send the text to tokenize as {\"prompt\": \"...\"} (or \"messages\")", "prompt")
    tokens = enc.encode(text, allow_special=True)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": n_ctx}


def detokenize(body, enc):
    """`POST /detokenize`: {"tokens": [ids]} -> {"prompt": text}."""
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not api.is_ids(tokens):
        raise api.APIError(400, "send the token ids as {\"tokens\": [int, ...]}", "tokens")
    return {"prompt": enc.decode(api.check_ids(tokens, api.enc_size(enc), "tokens"))}


def tokenizer_info(enc, n_ctx, template):
    """`GET /tokenizer_info`: the special tokens, the context and the chat template (Jinja text)."""
    eot = enc.decode([enc.eot_token])
    return {"tokenizer_class": "GPT2Tokenizer", "eos_token": eot, "bos_token": eot, "pad_token": None,
            "unk_token": eot, "eos_token_id": enc.eot_token, "vocab_size": api.enc_size(enc),
            "model_max_length": n_ctx, "max_model_len": n_ctx, "chat_template": template.source}

"""lm-evaluation-harness end to end: its `local-completions` model scores a task of our own through the server.

The task is a YAML over a local JSON-lines file (no hub access), the tokenizer is `export_hf`'s
folder, and `max_length` is the model's context. Each example's loglikelihood and greediness must
equal our in-process scores, with the harness's current request (`max_tokens: 1, logprobs: 1`,
the drawn token dropped) and the older one (`max_tokens: 0, logprobs: 10`).
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from serving import running_server

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file: `pytest -m "not slow"` skips it

DOCS = [
    {"context": "The quick brown fox", "continuation": " jumps over the lazy dog"},
    {"context": "A stitch in time", "continuation": " saves nine"},
    {"context": "All that glitters is", "continuation": " not gold"},
    {"context": "Hello", "continuation": " world"},
]
TASK = """task: gpt2_simple_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, served_sess):
    with pytest.MonkeyPatch.context() as env:  # offline for this module only: later tests see the environment as it was
        for name, value in dict(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false").items():
            env.setenv(name, value)
        yield from _setup(tmp_path_factory, served_sess)


def _setup(tmp_path_factory, served_sess):
    root = tmp_path_factory.mktemp("lm_eval")
    sess = served_sess
    hf = gpt2.export_hf(sess.folder, str(root / "hf"))
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    with running_server(sess, max_tokens=16) as (url, _):
        yield sess, hf, str(tasks), url


def in_process(sess, doc):
    """(sum of the continuation's logprobs, whether each is the argmax), split as the harness splits."""
    enc = sess.encoder
    context, cont = enc.encode(doc["context"]), enc.encode(doc["context"] + doc["continuation"])
    cont = cont[len(context):]
    ids = context + cont
    logits = sess.model.forward(tf.constant([ids], tf.int32))[0]
    logp = tf.nn.log_softmax(logits[0], axis=-1).numpy()
    picked = [logp[len(context) + i - 1] for i in range(len(cont))]
    return (sum(float(p[t]) for p, t in zip(picked, cont)),
            all(int(np.argmax(p)) == t for p, t in zip(picked, cont)))


def older_harness():
    """The harness's `local-completions` as versions before 0.4.3 called it: `max_tokens: 0`, all of the echo scored."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class Older(LocalCompletionsAPI):
        def _create_payload(self, messages, generate=False, gen_kwargs=None, seed=1234, eos=None, **kwargs):
            return {"model": self.model, "prompt": messages, "temperature": 0, "max_tokens": 0, "logprobs": 10,
                    "seed": seed, "echo": True}

        @staticmethod
        def parse_logprobs(outputs, tokens=None, ctxlens=None, **kwargs):
            res = []
            for out in outputs if isinstance(outputs, list) else [outputs]:
                for choice, ctxlen in zip(sorted(out["choices"], key=lambda c: c["index"]), ctxlens):
                    lp = choice["logprobs"]
                    scored = list(zip(lp["token_logprobs"][ctxlen:], lp["top_logprobs"][ctxlen:]))
                    res.append((sum(t for t, _ in scored), all(t == max(top.values()) for t, top in scored)))
            return res

    return Older


@pytest.mark.parametrize("shape", ["current", "older"])
def test_lm_eval_scores_a_local_task_through_the_server_as_in_process(setup, shape):
    import lm_eval
    from lm_eval.tasks import TaskManager

    sess, hf, tasks, url = setup
    args = dict(base_url=url + "/v1/completions", model="tiny", tokenizer=hf, tokenizer_backend="huggingface",
                max_length=sess.model.hparams.n_ctx, num_concurrent=1, max_retries=1, tokenized_requests=True)
    model = "local-completions" if shape == "current" else older_harness()(**args)
    results = lm_eval.simple_evaluate(model=model, model_args=args if shape == "current" else None,
                                      tasks=["gpt2_simple_tiny"], task_manager=TaskManager(include_path=tasks, include_defaults=False),
                                      log_samples=True, apply_chat_template=False)
    samples = sorted(results["samples"]["gpt2_simple_tiny"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    for sample, doc in zip(samples, DOCS):
        loglikelihood, greedy = sample["resps"][0][0]
        expected, expected_greedy = in_process(sess, doc)
        assert loglikelihood == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy

"""A chat fine-tune end to end: it learns to stop, and its one template reaches the server, transformers and GGUF."""
import json
import os
import random
import re

import httpx
import numpy as np
import openai
import pytest
from runs import make_tiny_model
from serving import running_server

import gpt2_simple as gpt2
from gpt2_simple.formats.chat_template import PRESETS
from gpt2_simple.formats.run_record import read_val_losses
from gpt2_simple.training import chats
from gpt2_simple.training.chats import ChatTemplate

pytestmark = pytest.mark.slow

EOT = 50256
HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 2, "n_layer": 2}
THINGS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "blood": "red",
          "sea": "blue", "leaf": "green", "cloud": "grey", "rose": "red", "milk": "white", "night": "black"}
# The same answers, with end-of-text outside the generation block: the mistake that never teaches a model to stop.
EOT_OUTSIDE = ("{% for m in messages %}{% if m.role == 'assistant' %}{{ 'assistant:' }}{% generation %}"
               "{{ ' ' + m.content }}{% endgeneration %}{{ eos_token }}{% else %}{{ m.role + ': ' + m.content + '\n' }}"
               "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


def _question(thing):
    return {"role": "user", "content": f"What color is the {thing}?"}


@pytest.fixture(scope="module")
def chat_runs(tmp_path_factory, real_vocab_dir):
    """Two tiny runs on 300 question/answer chats, 100 steps each: with the built-in template, and with
    end-of-text outside the trained mask. Returns (root, model_dir, data path)."""
    root = tmp_path_factory.mktemp("chat")
    model_dir = make_tiny_model(root, real_vocab_dir, hparams=HPARAMS)
    rng = random.Random(0)
    data = root / "chats.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for _ in range(300):
            thing = rng.choice(sorted(THINGS))
            f.write(json.dumps({"messages": [_question(thing), {"role": "assistant",
                                                                 "content": f"The {thing} is {THINGS[thing]}."}]}) + "\n")
    (root / "outside.jinja").write_text(EOT_OUTSIDE, encoding="utf-8")
    common = dict(steps=100, model_dir=model_dir, model_name="tiny", batch_size=2, accumulate_gradients=1,
                  sample_every=0, print_every=50, learning_rate=1e-2, seed=0, save_every=0,
                  checkpoint_dir=str(root / "checkpoint"))
    gpt2.finetune(gpt2.start_tf_sess(), str(data), run_name="chat", val_dataset=str(data), val_every=50, **common)
    gpt2.finetune(gpt2.start_tf_sess(), str(data), run_name="outside", chat_template=str(root / "outside.jinja"),
                  **common)
    return root, model_dir, str(data)


def _session(root, run_name):
    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, run_name=run_name, checkpoint_dir=str(root / "checkpoint"))
    return sess


def _stopped_share(sess):
    """The share of greedy chat replies, through the openai client, that end with end-of-text before max_tokens."""
    with running_server(sess) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        replies = [client.chat.completions.create(model="tiny", messages=[_question(thing)], max_tokens=20,
                                                  temperature=0).choices[0] for thing in sorted(THINGS) * 2]
    return sum(r.finish_reason == "stop" for r in replies) / len(replies), replies


def test_replies_end_with_end_of_text_only_when_it_was_trained(chat_runs):
    root, _, _ = chat_runs
    share, replies = _stopped_share(_session(root, "chat"))
    assert share >= 0.95, [r.message.content for r in replies]
    assert all(re.fullmatch(r" The \w+ is \w+\.", r.message.content) for r in replies)  # the form it was taught
    outside, replies = _stopped_share(_session(root, "outside"))
    assert outside < 0.95, [r.message.content for r in replies]  # it never learned to stop


def _conversations(n, seed):
    """Varied conversations: system turns, several assistant turns, empty content, Unicode, a user turn last."""
    rng = random.Random(seed)
    words = ["hello", "Ünïcödé", "日本語", "emoji 🙂", "", "  spaced  ", "line\nbreak", "<|endoftext|>?", "ok."]
    out = []
    for _ in range(n):
        conv = [{"role": "system", "content": rng.choice(words)}] if rng.random() < 0.4 else []
        for _ in range(rng.randint(1, 3)):
            conv += [{"role": "user", "content": " ".join(rng.sample(words, 2))},
                     {"role": "assistant", "content": rng.choice(words)}]
        if rng.random() < 0.3:
            conv.append({"role": "user", "content": rng.choice(words)})
        out.append(conv)
    return out


@pytest.fixture(scope="module")
def exported(chat_runs, tmp_path_factory):
    root, _, _ = chat_runs
    from transformers import AutoTokenizer

    out = gpt2.export_hf(str(root / "checkpoint" / "chat"), str(tmp_path_factory.mktemp("hf") / "chat"))
    return out, AutoTokenizer.from_pretrained(out)


def test_the_trained_mask_equals_transformers_assistant_mask_on_the_export(exported, enc, tmp_path):
    out, tokenizer = exported
    conversations = _conversations(100, seed=1)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    ours = chats.load_examples(enc, str(path), ChatTemplate(open(os.path.join(out, "chat_template.jinja")).read()))
    assert len(ours) == 100
    for conv, tokens, mask in zip(conversations, ours.tokens, ours.masks):
        theirs = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert tokens.tolist() == theirs["input_ids"]
        assert mask.astype(int).tolist() == theirs["assistant_masks"]
        ends = np.flatnonzero(np.diff(np.r_[mask.astype(int), 0]) == -1)  # the last token of each trained turn
        assert len(ends) == sum(m["role"] == "assistant" for m in conv) and (tokens[ends] == EOT).all()


def test_the_template_renders_the_same_in_the_server_and_in_transformers(chat_runs, exported):
    root, _, _ = chat_runs
    out, tokenizer = exported
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert config["chat_template"] == PRESETS["gpt2"] == open(os.path.join(out, "chat_template.jinja")).read()
    assert config["eos_token"] == "<|endoftext|>"
    with running_server(_session(root, "chat")) as (url, _):
        for conv in _conversations(20, seed=2):
            tokens = httpx.post(url + "/tokenize", json={"messages": conv}).json()["tokens"]
            text = httpx.post(url + "/detokenize", json={"tokens": tokens}).json()["prompt"]
            theirs = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            assert text.encode() == theirs.encode() and tokens == tokenizer(theirs)["input_ids"]


def test_the_gguf_export_carries_the_template(chat_runs, tmp_path):
    import gguf

    root, _, _ = chat_runs
    path = gpt2.export_gguf(str(root / "checkpoint" / "chat"), str(tmp_path / "chat.gguf"), dtype="f32")
    assert gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents() == PRESETS["gpt2"]


def test_generate_with_messages_answers_as_the_chat_endpoint_does(chat_runs):
    root, _, _ = chat_runs
    sess = _session(root, "chat")
    replies = gpt2.generate(sess, messages=[_question("snow")], length=20, top_k=1, return_as_list=True)
    assert re.fullmatch(r" The \w+ is \w+\.", replies[0])  # the reply alone, ended at end-of-text
    with running_server(sess) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        answer = client.chat.completions.create(model="tiny", messages=[_question("snow")], max_tokens=20,
                                                temperature=0)
    assert answer.choices[0].message.content == replies[0]


def test_a_transformers_pipeline_on_the_export_answers_as_generate_does(chat_runs, exported):
    from transformers import pipeline

    root, _, _ = chat_runs
    out, _ = exported
    ours = gpt2.generate(_session(root, "chat"), messages=[_question("coal")], length=20, top_k=1, return_as_list=True)
    theirs = pipeline("text-generation", model=out)([_question("coal")], max_new_tokens=20, do_sample=False)
    assert theirs[0]["generated_text"][-1] == {"role": "assistant", "content": ours[0]}


def test_evaluate_scores_the_trained_tokens(chat_runs, enc):
    root, _, data = chat_runs
    sess = _session(root, "chat")
    rows = gpt2.evaluate(sess, data, print_table=False)
    trained = sum(int(m.sum()) for m in chats.load_examples(enc, data, ChatTemplate()).masks)
    assert [r["tokens"] for r in rows] == [trained, trained]  # the base model and model-100
    assert rows[1]["loss"] < rows[0]["loss"] / 5  # the replies learned, scored on the tokens it trained on
    validation = read_val_losses(str(root / "checkpoint" / "chat"))  # val_dataset of the same shape, same tokens
    assert [step for step, _ in validation] == [0, 50, 100] and validation[-1][1] < validation[0][1] / 5
    assert validation[-1][1] == pytest.approx(rows[1]["loss"], rel=0.2)  # a sample of the same trained tokens


def test_the_copy_check_reads_the_runs_conversations(chat_runs):
    root, _, _ = chat_runs
    sess = _session(root, "chat")
    texts = gpt2.generate(sess, messages=[_question("sky")], length=20, top_k=1, return_as_list=True,
                          check_copies=True)
    assert texts[0].copy.tokens == len(sess.encoder.encode(texts[0]))  # the reply is checked
    assert len(sess.copy_index().tokens) == 5400  # every token of the 300 conversations, as trained


def test_a_lora_chat_runs_adapter_export_carries_the_template(chat_runs, tmp_path):
    root, model_dir, data = chat_runs
    run = gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, model_dir=model_dir, model_name="tiny", batch_size=2,
                        accumulate_gradients=1, sample_every=0, save_every=0, lora_rank=2,
                        checkpoint_dir=str(tmp_path)).run_dir
    out = gpt2.export_hf(run, str(tmp_path / "adapters"), peft_adapters=True)
    assert open(os.path.join(out, "chat_template.jinja")).read() == PRESETS["gpt2"]
    assert json.load(open(os.path.join(out, "tokenizer_config.json")))["chat_template"] == PRESETS["gpt2"]


def test_a_chat_run_resumes_exactly(chat_runs, tmp_path):
    root, model_dir, data = chat_runs
    common = dict(model_dir=model_dir, model_name="tiny", batch_size=2, accumulate_gradients=2, sample_every=0,
                  print_every=10, learning_rate=1e-3, seed=5, save_every=0, checkpoint_dir=str(tmp_path))
    straight = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, run_name="straight", **common).losses
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="resumed", **common)
    resumed = gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="resumed", **common).losses
    assert resumed == {3: straight[3], 4: straight[4]}

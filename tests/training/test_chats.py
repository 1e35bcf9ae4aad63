"""Structured data: the record shapes, the trained mask, bad records, and packed windows equal to examples alone."""
import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import gpt2_simple as gpt2
from gpt2_simple.formats.chat_template import PRESETS, ChatTemplate
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2
from gpt2_simple.training import chats, documents
from gpt2_simple.training.packing import ExampleSampler
from gpt2_simple.training.step import lm_loss

EOT = 50256
USER, REPLY = {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return str(path)


def _trained(enc, examples, i=0):
    """The text of record i's trained tokens (its first token never is)."""
    return enc.decode(examples.tokens[i][examples.masks[i]].tolist())


@pytest.mark.parametrize("record, trained", [
    ({"messages": [USER, REPLY]}, " Hello, friend.<|endoftext|>"),
    ({"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello, friend."}]},
     " Hello, friend.<|endoftext|>"),
    ({"prompt": "Headline: dogs bark.", "completion": " Dogs bark"}, " Dogs bark<|endoftext|>"),
    ({"prompt": [USER, {"role": "assistant", "content": "Hm?"}, USER], "completion": [REPLY]},
     " Hello, friend.<|endoftext|>"),  # an assistant turn inside the prompt is prompt
    ({"text": "Just some text."}, " some text.<|endoftext|>"),
    ({"messages": [{"role": "system", "content": "Be kind."}, USER, REPLY, USER, {"role": "assistant",
                                                                                "content": "Ünïcödé 日本"}]},
     " Hello, friend.<|endoftext|> Ünïcödé 日本<|endoftext|>"),
])
def test_each_shape_trains_on_what_the_model_should_write(tmp_path, enc, record, trained):
    examples = chats.load_examples(enc, _write_jsonl(tmp_path / "d.jsonl", [record]), ChatTemplate())
    assert _trained(enc, examples) == trained
    assert examples.tokens[0][examples.masks[0]][-1] == EOT  # the reply's end-of-text is trained: it learns to stop


def test_train_on_all_trains_every_token_but_the_first(tmp_path, enc):
    examples = chats.load_examples(enc, _write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, REPLY]}]),
                                   ChatTemplate(), train_on="all")
    assert examples.masks[0].tolist() == [False] + [True] * (len(examples.tokens[0]) - 1)
    assert enc.decode(examples.tokens[0].tolist()) == "user: Hi there\nassistant: Hello, friend.<|endoftext|>"


def test_a_csv_of_prompt_and_completion_columns_is_pairs(tmp_path, enc):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["prompt", "completion"], ["Q: 2+2?\nA:", " 4"], ["Q: red?\nA:", " a colour"]])
    assert chats.is_structured(str(path)) and not chats.is_structured(_write_jsonl(tmp_path / "t.jsonl",
                                                                                   [{"text": "x"}]))
    examples = chats.load_examples(enc, str(path), ChatTemplate())
    assert [_trained(enc, examples, i) for i in range(2)] == [" 4<|endoftext|>", " a colour<|endoftext|>"]


def test_the_dialogpt_preset_ends_every_turn_with_end_of_text_and_trains_the_replies(tmp_path, enc):
    examples = chats.load_examples(enc, _write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, REPLY]}]),
                                   ChatTemplate(PRESETS["dialogpt"]))
    assert enc.decode(examples.tokens[0].tolist()) == "Hi there<|endoftext|>Hello, friend.<|endoftext|>"
    assert _trained(enc, examples) == "Hello, friend.<|endoftext|>"


def test_a_template_without_generation_marks_trains_what_each_reply_adds(tmp_path, enc):
    plain = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>\n{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")
    examples = chats.load_examples(enc, _write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, REPLY, USER]}]),
                                   ChatTemplate(plain))
    assert _trained(enc, examples) == "Hello, friend.</s>\n"


BAD = [
    ('{"messages": [', "line 2 is not JSON"),
    ('{"messages": "hi"}', "line 2: messages must be a non-empty list"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "line 2: each message in messages needs a role among"),
    ('{"prompt": "x", "completion": [{"role": "assistant", "content": "y"}]}',
     "line 2: prompt and completion must both be strings or both be lists of messages"),
    ('{"conversations": [{"from": "alien", "value": "x"}]}', "line 2: each conversations turn needs \"from\""),
    ('{"title": "x"}', "line 2: the record has none of messages, prompt/completion, conversations or text"),
    ('[1, 2]', "line 2 is a JSON list, not an object"),
]


@pytest.mark.parametrize("line, message", BAD)
def test_a_malformed_record_is_one_line_naming_file_and_line_and_the_run_folder_is_untouched(workdir, line, message):
    root, model_dir, _ = workdir
    path = root / "chats.jsonl"
    path.write_text(json.dumps({"messages": [USER, REPLY]}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        gpt2.finetune(gpt2.start_tf_sess(), str(path), steps=1, model_dir=model_dir, model_name="tiny",
                      run_name="bad")
    text = str(caught.value)
    assert f"{path} {message}" in text and "\n" not in text
    assert not os.path.exists(root / "checkpoint" / "bad")


def test_records_with_nothing_to_train_on_are_refused_naming_train_on(tmp_path, enc):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER]}])
    with pytest.raises(ValueError, match="train_on='all'"), pytest.warns(UserWarning, match="1 record"):
        chats.load_examples(enc, path, ChatTemplate())


# ---------------------------------------------------------------------------------------------
# Packing


def test_packed_rows_hold_whole_examples_with_their_own_positions(tmp_path, enc):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, REPLY]}, {"prompt": "a", "completion": " b"}])
    examples = chats.load_examples(enc, path, ChatTemplate())
    rows = ExampleSampler(examples, seed=0, pack=True, eot=EOT).sample_batch(8, 40)  # [8, 4, 40]
    for tokens, trained, segments, positions in rows:
        for s in set(segments.tolist()) - {0}:
            at = np.flatnonzero(segments == s)
            whole = [i for i, t in enumerate(examples.tokens) if len(t) == len(at) and (t == tokens[at]).all()]
            assert whole and (positions[at] == np.arange(len(at))).all()  # a whole example, positions from 0
            assert (trained[at].astype(bool) == examples.masks[whole[0]]).all()
        assert (trained[segments == 0] == 0).all()
    assert (rows[:, 2] > 1).any()  # several examples share a window
    unpacked = ExampleSampler(examples, seed=0, pack=False, eot=EOT).sample_batch(8, 40)
    assert set(unpacked[:, 2].ravel().tolist()) == {0, 1}


def test_packed_documents_are_each_a_document_between_end_of_texts():
    stream = np.array([EOT, 5, 6, EOT, 7], np.int32)
    examples = documents.documents_as_examples([stream], EOT)
    assert [t.tolist() for t in examples.tokens] == [[EOT, 5, 6, EOT], [EOT, 7, EOT]]
    assert [m.tolist() for m in examples.masks] == [[False, True, True, True], [False, True, True]]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_packed_windows_summed_loss_and_gradients_equal_its_examples_run_alone(tiny_hparams, chunked):
    model = GPT2(HParams(**tiny_hparams), seed=3)
    rng = np.random.default_rng(0)
    lengths, width = (5, 9, 7), 24  # 21 tokens and 3 of padding
    examples = [(rng.integers(0, 97, n).astype(np.int32), np.r_[False, rng.random(n - 1) < 0.7]) for n in lengths]
    packed, at = np.zeros((1, 4, width), np.int32), 0
    for segment, (tokens, trained) in enumerate(examples, 1):
        packed[0, :, at:at + len(tokens)] = np.stack([tokens, trained, np.full(len(tokens), segment),
                                                      np.arange(len(tokens))])
        at += len(tokens)

    def summed(row):  # the mean over trained targets, times their count: the sum
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tf.constant(row), chunked=chunked) * float(row[:, 1, 1:].sum())
        return float(loss), [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, list(model.weights.values()))]

    loss, grads = summed(packed)
    alone = [summed(np.stack([t, m, np.ones_like(t), np.arange(len(t))]).astype(np.int32)[None]) for t, m in examples]
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-5)
    for i, g in enumerate(grads):  # relative to each gradient's size: an element that cancels to ~0 has no digits
        expected = sum(a[1][i] for a in alone)
        assert np.linalg.norm(g - expected) <= 1e-5 * np.linalg.norm(expected), list(model.weights)[i]


def test_a_step_of_examples_is_the_mean_over_every_trained_token_of_its_minibatches(tiny_hparams):
    """Accumulated minibatches count by their trained tokens, not equally: the step is one mean over all."""
    from gpt2_simple.training.optimizer import make_optimizer
    from gpt2_simple.training.step import compile_train_step

    model = GPT2(HParams(**tiny_hparams), seed=4)
    rng = np.random.default_rng(1)
    rows = []
    for length, trained in ((6, 5), (10, 2)):  # 5 trained tokens in one minibatch, 2 in the other
        row = np.zeros((4, 10), np.int32)
        row[0, :length], row[2, :length], row[3, :length] = rng.integers(0, 97, length), 1, np.arange(length)
        row[1, 1:1 + trained] = 1
        rows.append(row[None])
    batches = np.stack(rows)  # [accumulate 2, batch 1, 4, 10]
    before = {n: v.numpy() for n, v in model.weights.items()}
    with tf.GradientTape() as tape:
        total = sum(lm_loss(model, tf.constant(r)) * float(r[:, 1, 1:].sum()) for r in rows) / 7.0
    expected = dict(zip(model.weights, tape.gradient(total, list(model.weights.values()))))
    opt = make_optimizer("sgd", dict(model.weights), 100.0)  # moves far above the weights' float32 rounding
    step = compile_train_step(model, opt, list(model.weights), strategy=tf.distribute.get_strategy(), examples=True,
                              xla=False)
    assert float(step(tf.constant(batches))) == pytest.approx(float(total), rel=1e-5)
    for name, variable in model.weights.items():  # SGD: each weight moved by minus the rate times its gradient
        moved, grad = (before[name] - variable.numpy()) / 100.0, tf.convert_to_tensor(expected[name]).numpy()
        assert np.linalg.norm(moved - grad) <= 1e-5 * max(np.linalg.norm(grad), 1e-8), name


def test_documents_train_packed_with_packing_true(workdir):
    root, model_dir, data = workdir
    result = gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, model_name="tiny", batch_size=2,
                           accumulate_gradients=1, sample_every=0, save_every=0, line_by_line=True, packing=True,
                           learning_rate=1e-2, seed=0)
    assert len(result.losses) == 3 and result.losses[3] < result.losses[1]
    with pytest.raises(ValueError, match="packing=True packs documents"):
        gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, model_dir=model_dir, model_name="tiny", packing=True)


def test_a_hugging_face_folders_template_is_read_from_its_tokenizer_config(tmp_path):
    from gpt2_simple.formats.chat_template import FILE, read_run_template

    assert read_run_template(str(tmp_path)) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": PRESETS["dialogpt"]}))
    assert read_run_template(str(tmp_path)) == PRESETS["dialogpt"]  # a pulled DialoGPT-style base
    (tmp_path / FILE).write_text(PRESETS["gpt2"])
    assert read_run_template(str(tmp_path)) == PRESETS["gpt2"]  # the run's own file comes first

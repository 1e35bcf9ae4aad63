"""Copy marks through the server: `check_copies` and `copy_threshold` from the real openai client, on 127.0.0.1."""
import openai
import pytest
from runs import TEXT
from serving import running_server

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file (a fine-tuned run): `pytest -m "not slow"` skips it

PROMPT = TEXT[:40]  # the memorized run continues its training text from here


@pytest.fixture(scope="module")
def run_sess(memorized_run):
    root, model_dir, checkpoint_dir, data = memorized_run
    return gpt2.load_gpt2(gpt2.start_tf_sess(), checkpoint_dir=checkpoint_dir)


@pytest.fixture(scope="module")
def ai(run_sess):
    with running_server(run_sess) as (url, app):
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def check(sess, text):
    return sess.copy_index().check(sess.encoder.encode(text)).to_dict()


def test_each_choice_carries_its_copy_mark(ai, run_sess):
    out = ai.completions.create(model="run1", prompt=PROMPT, max_tokens=24, n=2, temperature=0.1, seed=0,
                                extra_body={"check_copies": True})
    assert [c.index for c in out.choices] == [0, 1] and out.copies_dropped == 0
    index = run_sess.copy_index()
    for choice in out.choices:
        mark = choice.copy_mark
        assert mark == check(run_sess, choice.text) and mark["longest"] >= 12, choice.text
        ids = run_sess.encoder.encode(choice.text)[mark["start"]:mark["start"] + mark["longest"]]
        assert index.tokens[mark["offset"]:mark["offset"] + mark["longest"]].tolist() == ids
        assert mark["mark"] == f"copied: {mark['longest']} of {mark['tokens']} tokens from line {mark['line']}"
        assert 0 < mark["share"] <= 1
    plain = ai.completions.create(model="run1", prompt=PROMPT, max_tokens=24, n=2, temperature=0.1, seed=0)
    assert [c.text for c in plain.choices] == [c.text for c in out.choices]
    assert "copy_mark" not in plain.choices[0].model_extra and "copies_dropped" not in plain.model_extra


def test_copy_threshold_drops_copies(ai, run_sess):
    kwargs = dict(model="run1", prompt=PROMPT, max_tokens=24, n=2, temperature=0.1, seed=0)
    dropped = ai.completions.create(**kwargs, extra_body={"copy_threshold": 12})
    assert (dropped.choices, dropped.copies_dropped) == ([], 2)
    kept = ai.completions.create(**kwargs, extra_body={"copy_threshold": 25})  # 24 tokens cannot share 25
    assert [c.index for c in kept.choices] == [0, 1] and kept.copies_dropped == 0
    assert all(c.copy_mark == check(run_sess, c.text) for c in kept.choices)
    with pytest.raises(openai.BadRequestError) as e:
        ai.completions.create(**kwargs, extra_body={"copy_threshold": 4})
    assert e.value.body["param"] == "copy_threshold" and "[8, " in e.value.body["message"]


def test_avoid_copies_keeps_every_choice_under_n_tokens_of_the_training_text(ai, run_sess):
    """The field reaches the compiled loop: the same request without it copies more than N tokens."""
    kwargs = dict(model="run1", prompt=PROMPT, max_tokens=24, n=2, temperature=0.1, seed=0)
    free = ai.completions.create(**kwargs, extra_body={"check_copies": True})
    assert min(c.copy_mark["longest"] for c in free.choices) > 10
    guarded = ai.completions.create(**kwargs, extra_body={"check_copies": True, "avoid_copies": 10})
    assert len(guarded.choices) == 2 and all(c.copy_mark["longest"] <= 10 for c in guarded.choices), guarded
    expected = gpt2.generate(run_sess, prefix=PROMPT, include_prefix=False, return_as_list=True, length=24,
                             temperature=0.1, seed=0, nsamples=2, batch_size=2, avoid_copies=10)
    assert [c.text for c in guarded.choices] == expected
    with pytest.raises(openai.BadRequestError) as e:
        ai.completions.create(**kwargs, extra_body={"avoid_copies": 65})
    assert e.value.body["param"] == "avoid_copies" and "[0, 64]" in e.value.body["message"]


def test_chat_choices_carry_the_mark_of_their_reply_only(ai, run_sess):
    kwargs = dict(model="run1", messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0.1,
                  seed=0)
    out = ai.chat.completions.create(**kwargs, extra_body={"check_copies": True})
    content, mark = out.choices[0].message.content, out.choices[0].copy_mark
    assert check(run_sess, PROMPT)["longest"] >= 8  # the prompt is training text; the reply after "assistant:" is not
    assert mark == check(run_sess, content) and mark["longest"] == 0, content
    assert mark["mark"] == "new: no 8-token span of the training data"
    kept = ai.chat.completions.create(**kwargs, extra_body={"copy_threshold": 8})
    assert kept.choices[0].message.content == content and kept.copies_dropped == 0


def test_a_stream_gets_the_mark_in_its_last_chunk(ai, run_sess):
    pieces = list(ai.completions.create(model="run1", prompt=PROMPT, max_tokens=24, temperature=0.1, seed=0,
                                        stream=True, extra_body={"check_copies": True}))
    text = "".join(p.choices[0].text for p in pieces)
    assert pieces[-1].choices[0].finish_reason == "length"
    assert pieces[-1].choices[0].copy_mark == check(run_sess, text) and check(run_sess, text)["longest"] >= 12
    assert all("copy_mark" not in p.choices[0].model_extra for p in pieces[:-1])
    with pytest.raises(openai.BadRequestError) as e:
        ai.completions.create(model="run1", prompt=PROMPT, max_tokens=4, stream=True,
                              extra_body={"copy_threshold": 12})
    assert e.value.body["param"] == "copy_threshold" and "leave out stream" in e.value.body["message"]


def test_a_model_without_training_text_refuses_check_copies(memorized_run):
    root, model_dir, checkpoint_dir, data = memorized_run
    sess = gpt2.load_gpt2(gpt2.start_tf_sess(), model_name="tiny", model_dir=model_dir)
    with running_server(sess) as (url, app):
        ai = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            ai.completions.create(model="tiny", prompt="Hello", max_tokens=4, extra_body={"check_copies": True})
        assert e.value.status_code == 400 and e.value.body["param"] == "check_copies"
        assert "records no training dataset" in e.value.body["message"]
        assert "gpt2_simple serve --training_data FILE" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            ai.completions.create(model="tiny", prompt="Hello", max_tokens=4, extra_body={"avoid_copies": 8})
        assert e.value.body["param"] == "avoid_copies" and "--training_data FILE" in e.value.body["message"]
    with running_server(sess, training_data=data) as (url, app):  # the fix the message names
        ai = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        out = ai.completions.create(model="tiny", prompt="Hello", max_tokens=4, extra_body={"check_copies": True})
        assert out.choices[0].copy_mark == sess.copy_index(data).check(
            sess.encoder.encode(out.choices[0].text)).to_dict()

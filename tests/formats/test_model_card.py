"""`export_hf` writes a complete model repository: transformers, its tokenizer, its generation config and
huggingface_hub's card parser all read it as it is."""
import os
import warnings

import numpy as np
import pytest
from runs import make_tiny_model, write_text

import gpt2_simple as gpt2
from encoder import get_encoder
from gpt2_simple.formats.run_record import read_best, read_copies, read_evaluation, read_val_losses


@pytest.fixture(scope="module")
def exported(tmp_path_factory, real_vocab_dir):
    """A tiny run (its base folder named 124M, so the card can name OpenAI's id) with validation and
    keep_best, exported to `hf/`: (the export folder, the run folder)."""
    root = tmp_path_factory.mktemp("card")
    model_dir = make_tiny_model(root, real_vocab_dir, name="124M")
    data = write_text(root)
    run = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, model_name="124M", model_dir=model_dir, batch_size=2,
                        accumulate_gradients=1, sample_every=0, checkpoint_dir=str(root / "checkpoint"), seed=2,
                        val_dataset=data, val_every=2, keep_best=True, learning_rate=1e-3).run_dir
    sess = gpt2.start_tf_sess()
    gpt2.evaluate(sess, data, run_name="run1", checkpoint_dir=str(root / "checkpoint"), model_dir=model_dir,
                  print_table=False)  # its table goes into the card, and so does a copy check
    gpt2.load_gpt2(sess, run_name="run1", checkpoint_dir=str(root / "checkpoint"))
    gpt2.generate(sess, nsamples=2, batch_size=2, length=12, seed=1, check_copies=True, return_as_list=True)
    return gpt2.export_hf(run, str(root / "hf")), run


@pytest.mark.slow
def test_the_export_is_a_repository_that_transformers_reads_whole(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

    out, run = exported
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "generation_config.json", "merges.txt",
                                       "model.safetensors", "tokenizer_config.json", "vocab.json"]
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = np.array([[464, 2068, 7586, 21831, 50256, 11]])
    with torch.no_grad():
        expected = theirs(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(gpt2.load_model(run)(tokens).numpy(), expected, atol=1e-4, rtol=1e-4)
    assert GenerationConfig.from_pretrained(out).eos_token_id == 50256
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.eos_token, tokenizer.model_max_length) == ("<|endoftext|>", 32)
    assert tokenizer("Hello world, a test.")["input_ids"] == get_encoder(out).encode("Hello world, a test.")
    text = pipeline("text-generation", model=out)("The quick", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    assert text.startswith("The quick") and len(text) > len("The quick")


@pytest.mark.slow
def test_the_card_parses_without_warnings_and_tells_how_the_run_was_made(exported):
    from huggingface_hub import ModelCard

    out, run = exported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = ModelCard.load(os.path.join(out, "README.md"))
    assert [str(w.message) for w in caught] == []
    data = card.data.to_dict()
    assert (data["base_model"], data["base_model_relation"], data["library_name"], data["license"],
            data["pipeline_tag"]) == ("openai-community/gpt2", "finetune", "transformers", "mit", "text-generation")
    assert "gpt2_simple" in data["tags"]
    body = card.text
    assert "| steps | 4 |" in body and "| learning_rate | 0.001 |" in body and "`data.txt`" in body
    best, last = read_best(run), read_val_losses(run)[-1]
    assert f"Best validation loss: {best['val_loss']:.4f} at step {best['step']}." in body
    assert f"Validation loss: {last[1]:.4f} nats per token at step {last[0]} (the last)." in body
    table = read_evaluation(run)["rows"]
    assert [r["model"] for r in table] == ["base 124M", "model-4"]
    assert f"| model-4 | 4 | {table[1]['loss']:.4f} | {table[1]['perplexity']:.2f} |" in body
    assert "## Evaluation" in body and "Held-out `data.txt`" in body
    check = read_copies(run)
    assert check["samples"] == 2 and f"read 2 sample(s): {check['copied']} share 8 or more tokens" in body


def test_a_model_folder_gets_a_card_without_a_base_model(tmp_path, real_vocab_dir):
    from huggingface_hub import ModelCard

    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    out = gpt2.export_hf(os.path.join(model_dir, "tiny"), str(tmp_path / "hf"))
    data = ModelCard.load(os.path.join(out, "README.md")).data.to_dict()
    assert "base_model" not in data and data["pipeline_tag"] == "text-generation"

"""LoRA: adapters over a frozen (16-bit) base, merged and adapter-only saves, exact resume, peft, bad input."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY
import runs
from runs import make_tiny_model, snapshot, subprocess_env, write_text

import gpt2_simple as gpt2
from gpt2_simple import cli
from gpt2_simple.formats import checkpoint
from gpt2_simple.model import lora
from gpt2_simple.model.hparams import HParams
from gpt2_simple.model.model import GPT2
from gpt2_simple.training import lora_run
from gpt2_simple.training.step import lm_loss

FAST = dict(runs.FAST, save_every=0, learning_rate=1e-2)
LORA = dict(FAST, lora_rank=4, seed=3)
TOKENS = np.random.default_rng(0).integers(0, TINY["n_vocab"], size=(2, 12))


def _tiny_model(seed=0):
    return GPT2(HParams.from_dict(TINY), seed=seed)


def _train_b(model, seed=1):
    """Give every B random values (as training would), so the adapters change the model."""
    rng = np.random.default_rng(seed)
    for name, var in model.lora_weights.items():
        if name.endswith("lora_B"):
            var.assign(rng.normal(0.0, 0.05, size=var.shape).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# The adapter math


def test_step_zero_equals_the_base_model_exactly():
    model = _tiny_model()
    base = model(TOKENS).numpy()
    base_train = model.train_logits(tf.constant(TOKENS, tf.int32)).numpy()
    model.enable_lora(4, seed=0)
    assert np.array_equal(model(TOKENS).numpy(), base)
    assert np.array_equal(model.train_logits(tf.constant(TOKENS, tf.int32), recompute=True).numpy(), base_train)
    # In 16 bits, step 0 equals the same base rounded to bfloat16, without adapters.
    rounded, adapted = _tiny_model(), _tiny_model()
    lora.freeze(rounded, tf.bfloat16)
    adapted.enable_lora(4, base_precision="bfloat16", seed=0)
    assert np.array_equal(adapted(TOKENS).numpy(), rounded(TOKENS).numpy())
    assert not np.array_equal(rounded(TOKENS).numpy(), base)  # the rounding is real


@pytest.mark.parametrize("precision, dtype", [("bfloat16", tf.bfloat16), ("float16", tf.float16)])
def test_frozen_base_is_stored_in_16_bits_and_gets_no_gradient(precision, dtype):
    model = _tiny_model()
    model.enable_lora(4, base_precision=precision, seed=0)
    stored = {name: var.dtype for name, var in model.weights.items()}
    assert {stored[n] for n in stored if "/ln_" not in n} == {dtype}
    assert {stored[n] for n in stored if "/ln_" in n} == {tf.float32}  # LayerNorm's vectors, 0.03%
    assert not any(var.trainable for var in model.weights.values())
    adapters = list(model.lora_weights.values())
    assert len(adapters) == 2 * 4 * TINY["n_layer"] and all(a.dtype == tf.float32 for a in adapters)
    assert {id(v) for v in model.trainable_variables} == {id(a) for a in adapters}
    for recompute in (False, True):
        with tf.GradientTape() as tape:
            loss = lm_loss(model, tf.constant(TOKENS, tf.int32), recompute=recompute)
        assert {id(v) for v in tape.watched_variables()} <= {id(a) for a in adapters}
        grads = tape.gradient(loss, adapters)
        b_grads = [g for g, name in zip(grads, model.lora_weights) if name.endswith("lora_B")]
        assert all(g is not None for g in grads) and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in b_grads)


def test_merged_weights_equal_w_plus_scale_a_b_and_merge_keeps_the_logits():
    model = _tiny_model()
    model.enable_lora(4, alpha=8, targets=["c_attn", "mlp/c_proj"], seed=0)
    assert model.lora.scale == 2.0 and model.lora.targets == ("c_attn", "mlp/c_proj")
    _train_b(model)
    merged = lora.merged_weights(model)
    for name, var in model.weights.items():
        layer = name.rsplit("/", 1)[0]
        if name.endswith("/w") and layer.split("/", 2)[2] in ("attn/c_attn", "mlp/c_proj"):
            a, b = model.lora_weights[layer + "/lora_A"].numpy(), model.lora_weights[layer + "/lora_B"].numpy()
            expected = var.numpy().astype(np.float64) + 2.0 * a.astype(np.float64) @ b.astype(np.float64)
            np.testing.assert_allclose(merged[name].numpy(), expected, rtol=1e-6, atol=1e-7)
        else:
            assert np.array_equal(merged[name].numpy(), var.numpy()), name
    on_the_fly = model(TOKENS).numpy()
    model.merge_lora()
    assert model.lora is None and model.lora_weights == {}
    np.testing.assert_allclose(model(TOKENS).numpy(), on_the_fly, atol=1e-5)


def test_a_merged_save_writes_a_layer_at_a_time_into_one_bundle_that_any_reader_opens(tmp_path):
    model = _tiny_model()
    model.enable_lora(4, alpha=8, base_precision="bfloat16", seed=0)
    _train_b(model)
    prefix = checkpoint.save_checkpoint(model, str(tmp_path), 3)
    files = checkpoint.data_files(prefix)
    assert len(files) == model.hparams.n_layer + 1  # the embeddings and final norm, then one a layer
    reader = tf.train.load_checkpoint(prefix)  # TF's own reader: one bundle, its shards behind one index
    expected = checkpoint.model_tensors(model)
    assert sorted(reader.get_variable_to_shape_map()) == sorted(expected)
    for name, tensor in expected.items():
        assert np.array_equal(reader.get_tensor(name), tensor.numpy()), name
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no part left behind
    checkpoint.remove_bundle(prefix)
    assert checkpoint.data_files(prefix) == [] and not os.path.exists(prefix + ".index")


# ---------------------------------------------------------------------------------------------
# finetune with LoRA


# finetune(**FAST-like options below, seed=3) losses at the commit before LoRA (exact on that machine).
TODAYS_LOSSES = [11.465546607971191, 11.397066116333008, 11.317745208740234, 11.313797950744629]


@pytest.mark.slow
def test_lora_rank_zero_losses_equal_todays(workdir):
    root, model_dir, data = workdir
    options = dict(steps=4, model_name="tiny", model_dir=model_dir, sample_every=0, save_every=0, print_every=10,
                   accumulate_gradients=2, batch_size=2, learning_rate=1e-3, seed=3)
    plain = gpt2.finetune(gpt2.start_tf_sess(), data, run_name="plain", **options)
    zero = gpt2.finetune(gpt2.start_tf_sess(), data, run_name="zero", lora_rank=0, lora_alpha=None,
                         lora_targets=None, base_precision="float32", lora_save="merged", **options)
    assert zero.losses == plain.losses  # bit for bit
    np.testing.assert_allclose([plain.losses[s] for s in range(1, 5)], TODAYS_LOSSES, rtol=1e-6)
    assert snapshot(root / "checkpoint" / "plain")["model-4.data-00000-of-00001"] == \
        snapshot(root / "checkpoint" / "zero")["model-4.data-00000-of-00001"]


def _held_out_loss(model, enc, text):
    tokens = np.array(enc.encode(text)[:32 * 8]).reshape(8, 32)
    return float(lm_loss(model, tf.constant(tokens, tf.int32)))


@pytest.mark.slow
def test_lora_lowers_the_held_out_loss(workdir, real_vocab_dir):
    root, model_dir, _ = workdir
    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on under a mat rug big small red blue".split()

    def corpus(n):
        return "".join(" ".join(rng.choice(words, 5)) + ".\n" for _ in range(n))

    train, held_out = write_text(root, corpus(400), "train.txt"), corpus(100)
    # Width 64: the frozen tied embedding must leave room for confident logits (at width 16 the
    # largest logit a unit-norm hidden state can reach is about 3, too little over 50257 tokens).
    make_tiny_model(root, real_vocab_dir, name="wide", hparams=dict(TINY, n_vocab=50257, n_embd=64))
    sess = gpt2.start_tf_sess()
    gpt2.load_gpt2(sess, model_name="wide", model_dir=model_dir)
    before = _held_out_loss(sess.model, sess.encoder, held_out)
    result = gpt2.finetune(sess, train, steps=40, base_precision="bfloat16", use_memory_saving_gradients=True,
                           **dict(LORA, model_name="wide", model_dir=model_dir, lora_rank=8, learning_rate=3e-2))
    after = _held_out_loss(sess.model, sess.encoder, held_out)
    assert result.losses[40] < result.losses[1]
    assert after <= 0.75 * before, (before, after)  # at least 25% lower; measured 12.41 -> 8.18 (34%)


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_saves_are_merged_openai_bundles(workdir):
    root, model_dir, data = workdir
    options = dict(LORA, model_dir=model_dir, base_precision="bfloat16", use_memory_saving_gradients=True)
    whole = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, run_name="whole", **options)
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="split", **options)
    sess = gpt2.start_tf_sess()
    second = gpt2.finetune(sess, data, steps=2, run_name="split", **options)
    assert sorted(second.losses) == [3, 4]
    assert [second.losses[s] for s in (3, 4)] == [whole.losses[s] for s in (3, 4)]  # exact
    prefix = str(root / "checkpoint" / "split" / "model-4")
    stored = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    assert sorted(stored) == sorted(n for n, _ in checkpoint.openai_variables(sess.model.hparams))
    assert set(stored.values()) == {tf.float32}
    merged = gpt2.load_model(str(root / "checkpoint" / "split"))
    np.testing.assert_allclose(merged(TOKENS).numpy(), sess.model(TOKENS).numpy(), atol=2e-5)


@pytest.mark.slow
def test_generation_from_the_merged_run_equals_generation_on_the_fly(workdir):
    root, model_dir, data = workdir
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, data, steps=3, base_precision="bfloat16", **dict(LORA, model_dir=model_dir))
    assert sess.model.lora is not None  # the session generates with the adapters applied on the fly
    kwargs = dict(prefix="The quick", length=12, nsamples=2, batch_size=2, seed=4, return_as_list=True)
    on_the_fly = gpt2.generate(sess, **kwargs)
    merged = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="run1")
    assert merged.model.lora is None
    assert gpt2.generate(merged, **kwargs) == on_the_fly


@pytest.mark.slow
def test_adapter_only_saves_are_small_and_load_onto_their_base(workdir):
    root, model_dir, data = workdir
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, data, steps=2, lora_save="adapters", run_name="small", **dict(LORA, model_dir=model_dir))
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="big", **dict(LORA, model_dir=model_dir))
    size = {run: sum(os.path.getsize(f) for f in checkpoint.data_files(str(root / "checkpoint" / run / "model-2")))
            for run in ("small", "big")}  # a merged save has a data file a layer
    assert size["small"] < size["big"] / 100, size
    loaded = gpt2.load_gpt2(gpt2.start_tf_sess(), run_name="small")
    np.testing.assert_array_equal(loaded.model(TOKENS).numpy(), sess.model(TOKENS).numpy())
    kwargs = dict(length=8, seed=1, return_as_list=True)
    assert gpt2.generate(loaded, **kwargs) == gpt2.generate(sess, **kwargs)
    exported = gpt2.export_hf(str(root / "checkpoint" / "small"), str(root / "hf_small"))
    np.testing.assert_allclose(gpt2.load_model(exported)(TOKENS).numpy(), sess.model(TOKENS).numpy(), atol=2e-5)
    # and it resumes exactly: the base model comes from the folder the run records
    resumed = gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, lora_save="adapters", run_name="small",
                            **dict(LORA, model_dir=model_dir))
    assert sorted(resumed.losses) == [3]


# ---------------------------------------------------------------------------------------------
# Hugging Face peft


def _peft_model(hf_base, adapter_dir):
    import torch  # noqa: F401
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    return PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(hf_base), adapter_dir).eval()


def _torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.slow
def test_peft_reads_our_adapters_with_our_logits(workdir):
    root, model_dir, data = workdir
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, data, steps=3, lora_alpha=8, lora_targets="c_attn,attn/c_proj,c_fc",
                  **dict(LORA, model_dir=model_dir))
    hf_base = gpt2.export_hf(os.path.join(model_dir, "tiny"), str(root / "hf_base"))
    adapter_dir = gpt2.export_hf(str(root / "checkpoint" / "run1"), str(root / "peft"), peft_adapters=True)
    assert sorted(os.listdir(adapter_dir)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                               "tokenizer_config.json"]
    tokens = np.random.default_rng(1).integers(0, 50257, size=(2, 16))
    theirs = _torch_logits(_peft_model(hf_base, adapter_dir), tokens)
    ours = sess.model(tokens).numpy()
    base = gpt2.load_model(os.path.join(model_dir, "tiny"))(tokens).numpy()
    assert np.abs(ours - base).max() > 1e-3  # the adapters matter
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_we_load_a_peft_adapter_folder_with_its_logits(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=TINY["n_vocab"], n_positions=TINY["n_ctx"], n_embd=TINY["n_embd"],
                        n_head=TINY["n_head"], n_layer=TINY["n_layer"])
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    peft_config = LoraConfig(r=4, lora_alpha=12, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                             lora_dropout=0.0, init_lora_weights=False)  # random B: the adapters matter
    theirs = get_peft_model(base, peft_config).eval()
    theirs.save_pretrained(tmp_path / "adapter")
    ours = gpt2.load_model(str(tmp_path / "base"), peft_adapters=str(tmp_path / "adapter"))
    assert ours.lora.rank == 4 and ours.lora.scale == 3.0 and ours.lora.targets == ("c_attn", "c_fc")
    np.testing.assert_allclose(ours(TOKENS).numpy(), _torch_logits(theirs, TOKENS), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Devices, precision, command line


@pytest.mark.slow
def test_mirrored_lora_on_two_logical_cpus_equals_one_device(workdir):
    root, model_dir, data = workdir
    child = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import gpt2_simple as gpt2
        options = dict(steps=2, model_name="tiny", model_dir={model_dir!r}, batch_size=2, accumulate_gradients=1,
                       sample_every=0, seed=5, lora_rank=4, base_precision="bfloat16",
                       optimizer="sgd", learning_rate=0.5)  # linear in the all-reduced gradients
        one = gpt2.finetune(gpt2.start_tf_sess(), {data!r}, run_name="one", **options).losses
        two = gpt2.finetune(gpt2.start_tf_sess(), {data!r}, run_name="two", strategy="mirrored", **options).losses
        print("RESULT", json.dumps([one, two]))
    """)
    proc = subprocess.run([sys.executable, "-c", child], env=subprocess_env(), capture_output=True, text=True,
                          timeout=600, cwd=str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = __import__("json").loads(proc.stdout.split("RESULT", 1)[1])
    assert len(one) == 2
    np.testing.assert_allclose([two[k] for k in sorted(two)], [one[k] for k in sorted(one)], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision, base", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")])
def test_lora_with_mixed_precision_and_adafactor_trains(workdir, precision, base):
    root, model_dir, data = workdir
    result = gpt2.finetune(gpt2.start_tf_sess(), data, steps=6, precision=precision, base_precision=base,
                           optimizer="adafactor", **dict(LORA, model_dir=model_dir, sample_every=3, sample_length=8))
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert os.path.getsize(root / "samples" / "run1" / "samples-4") > 0  # sampled with the 16-bit base


@pytest.mark.slow
def test_cli_flags(workdir):
    root, model_dir, data = workdir
    code = cli.main(["finetune", data, "--model_dir", model_dir, "--model_name", "tiny", "--steps", "1",
                     "--sample_every", "0", "--lora_rank", "2", "--lora_alpha", "6", "--lora_targets",
                     "c_attn,mlp/c_proj", "--base_precision", "bfloat16", "--lora_save", "adapters"])
    assert code == 0
    model = gpt2.load_model(str(root / "checkpoint" / "run1"))
    assert (model.lora.rank, model.lora.alpha, model.lora.targets) == (2, 6.0, ("c_attn", "mlp/c_proj"))


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the argument and the fix; nothing on disk changes


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, message", [
    (dict(lora_rank=-1), "lora_rank=-1 must be 0 (full fine-tuning) or a positive integer"),
    (dict(lora_rank=2.5), "lora_rank=2.5 must be 0"),
    (dict(lora_rank="x"), "lora_rank='x' must be an integer"),
    (dict(lora_rank=17), "lora_rank=17 is larger than the model's matrices allow (at most n_embd=16)"),
    (dict(lora_rank=4, lora_targets=["c_attn", "q_proj"]), "lora_targets=['c_attn', 'q_proj'] names no layer or an unknown"),
    (dict(lora_rank=4, lora_alpha=0), "lora_alpha=0 must be a number > 0"),
    (dict(lora_rank=4, lora_alpha=-2.0), "lora_alpha=-2.0 must be a number > 0"),
    (dict(lora_rank=4, base_precision="int8"), "base_precision='int8' is not supported; use one of"),
    (dict(lora_rank=4, lora_save="both"), "lora_save='both' is not supported"),
    (dict(base_precision="bfloat16"), "base_precision='bfloat16' applies only to LoRA training, but lora_rank=0"),
])
def test_bad_lora_options(workdir, kwargs, message):
    root, model_dir, data = workdir
    before = snapshot(root)
    with pytest.raises(ValueError) as info:
        gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, **dict(FAST, model_dir=model_dir, **kwargs))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert snapshot(root) == before


def test_options_without_effect_under_lora_warn_once():
    from gpt2_simple.training.options import make_options

    with pytest.warns(UserWarning, match=r"only_train_transformer_layers=True has no effect with lora_rank > 0"):
        opts = make_options(lora_rank=4, only_train_transformer_layers=True, lora_targets="c_fc, c_attn")
    assert opts.lora_targets == ("c_attn", "c_fc") and opts.lora_alpha == 4.0


def test_float16_base_on_a_device_without_float16_kernels(workdir, monkeypatch):
    root, model_dir, data = workdir
    monkeypatch.setattr(lora_run, "can_compute", lambda dtype: dtype != tf.float16)
    before = snapshot(root)
    with pytest.raises(ValueError, match=r"base_precision='float16': this device has no float16 .* use "
                                         r"base_precision='bfloat16'"):
        gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, lora_rank=4, base_precision="float16",
                      **dict(FAST, model_dir=model_dir))
    assert snapshot(root) == before
    monkeypatch.undo()
    assert lora_run.can_compute(tf.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("first, then, message", [
    (dict(lora_rank=4), dict(lora_rank=8), "lora_rank=8, lora_alpha=8.0, lora_targets=['c_attn', 'attn/c_proj', "
                                           "'c_fc', 'mlp/c_proj'] differs from the lora_rank=4"),
    (dict(lora_rank=4), dict(lora_rank=4, lora_targets=["c_attn"]), "differs from the lora_rank=4, lora_alpha=4.0"),
    (dict(lora_rank=4), dict(lora_rank=0), "lora_rank=0, lora_alpha=None, lora_targets=[] differs"),
    (dict(lora_rank=0), dict(lora_rank=4), "lora_rank=4: run checkpoint/run1 was fully fine-tuned"),
])
def test_resuming_with_other_lora_settings_is_an_error(workdir, first, then, message):
    root, model_dir, data = workdir
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, **dict(FAST, model_dir=model_dir, **first))
    before = snapshot(root)
    with pytest.raises(ValueError) as info:
        gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, **dict(FAST, model_dir=model_dir, **then))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert snapshot(root) == before


@pytest.mark.slow
def test_adapter_only_run_without_its_base_or_with_another_base(workdir, real_vocab_dir):
    root, model_dir, data = workdir
    gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, lora_save="adapters", **dict(LORA, model_dir=model_dir))
    shutil.move(os.path.join(model_dir, "tiny"), str(root / "elsewhere"))
    before = snapshot(root)
    for call in (lambda: gpt2.load_gpt2(gpt2.start_tf_sess()),
                 lambda: gpt2.finetune(gpt2.start_tf_sess(), data, steps=1, lora_save="adapters",
                                       **dict(LORA, model_dir=model_dir))):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert f"base model folder {os.path.join(model_dir, 'tiny')} is missing" in str(info.value) and "\n" not in str(info.value)
    assert snapshot(root) == before
    wider = dict(TINY, n_vocab=50257, n_embd=32)
    make_tiny_model(root, real_vocab_dir, hparams=wider)
    before = snapshot(root)
    with pytest.raises(ValueError) as info:
        gpt2.load_gpt2(gpt2.start_tf_sess())
    assert "the base model has other sizes than the one trained" in str(info.value)
    assert "\n" not in str(info.value) and snapshot(root) == before


def test_an_adapter_table_has_one_shape_from_its_start_until_it_fills():
    """The loops compile a program per shape of the table's matrices: a table sized for the runs a server opens
    has their shape before the first (warm-up) compile, and keeps it until it fills (then doubles)."""
    from gpt2_simple.model.adapter_rows import BASE, AdapterTable

    hp = HParams(**TINY)
    table = AdapterTable(hp, capacity=2, rank=4)

    def widths():
        return {a.shape[1] for block in table.rows([BASE]) for a, _, _ in block}

    assert widths() == {3 * 4}  # the base's position and two adapters of rank 4, before any is held
    rng, config = np.random.default_rng(0), lora.check_settings(4, 8.0, list(lora.TARGETS))
    arrays = {f"model/h{i}/{lora.LAYER_PATHS[t]}/lora_{x}": rng.normal(size=(nx, 4) if x == "A" else (4, nf))
              for i in range(hp.n_layer) for t, (nx, nf) in table.shapes().items() for x in "AB"}
    for _ in range(2):
        table.add(config, arrays, source="run")
        assert widths() == {3 * 4}
    table.add(config, arrays, source="run")
    assert widths() == {5 * 4}  # full: room for twice as many


def test_a_16_bit_base_is_read_a_slice_at_a_time_with_the_whole_tensor_s_rounding(tmp_path, monkeypatch):
    """A 16-bit base is cast as it is read, a slice of rows at a time (TensorFlow's allocator would keep a whole
    float32 tensor's memory); the weights equal the whole float32 tensors cast at once, exactly."""
    from gpt2_simple.formats import tensor_reads

    from gpt2_simple.model.hparams import save_hparams

    model = _tiny_model()
    checkpoint.save_checkpoint(model, str(tmp_path), 1)
    save_hparams(model.hparams, str(tmp_path))
    reads = []
    restore = tf.raw_ops.RestoreV2
    monkeypatch.setattr(tensor_reads, "SLICE_BYTES", 256)  # a few rows a slice, so every matrix takes several
    monkeypatch.setattr(tf.raw_ops, "RestoreV2", lambda **kw: reads.append(kw["shape_and_slices"][0]) or restore(**kw))
    for precision, dtype in (("bfloat16", tf.bfloat16), ("float16", tf.float16)):
        frozen = checkpoint.load_checkpoint(str(tmp_path), base_precision=precision)
        for name, var in model.weights.items():
            want = var if "/ln_" in name else tf.cast(var, dtype)
            np.testing.assert_array_equal(frozen.weights[name].numpy(), want.numpy())
            assert frozen.weights[name].dtype == want.dtype
    assert len(reads) > 2 * 2 * len(model.weights)  # both loads read in slices: over two reads a weight

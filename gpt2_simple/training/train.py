"""Fine-tuning: gpt-2-simple's `finetune`, as a TF2 training loop that resumes exactly.

This module owns the training run, as a list of named steps: check the options
(`options.py`), choose the devices (`distribute.py`), prepare the run (weights, encoder,
dataset, run folder), build the trainer (optimizer, resumed state, compiled step), then the
outer Python loop with gpt-2-simple's cadence and printed lines: progress, training samples,
validation, saves, Ctrl-C. Where the weights come from and what a save holds are `resume.py`'s,
the compiled step `step.py`'s, the update rule `optimizer.py`'s, datasets `dataset.py`'s, and
scalars, validation and samples `progress.py`'s.
"""
import contextlib
import dataclasses
import os
import signal
import threading
import time
import warnings

import numpy as np
import tensorflow as tf

from encoder import get_encoder

from ..formats import checkpoint
from ..model.names import run_folder
from . import dataset as dataset_module
from . import lora_run, resume
from .distribute import describe, is_chief, resolve_strategy
from .optimizer import make_optimizer
from .options import TrainOptions, TrainResult, as_int
from .progress import generate_samples, log_scalars, validate, validation_sample
from .step import LossScale, compile_eval_step, compile_train_step


def finetune(sess, dataset, steps=-1, model_name="124M", model_dir="models", combine=50000, batch_size=1,
             learning_rate=0.0001, accumulate_gradients=5, restore_from="latest", run_name="run1",
             checkpoint_dir="checkpoint", sample_every=100, sample_length=1023, sample_num=1, multi_gpu=False,
             save_every=1000, print_every=1, max_checkpoints=1, use_memory_saving_gradients=False,
             only_train_transformer_layers=False, optimizer="adam", overwrite=False, reuse=False, *, seed=None,
             sample_dir="samples", strategy=None, precision="float32", val_dataset=None, val_every=0,
             val_batch_size=2, val_batch_count=40, lora_rank=0, lora_alpha=None, lora_targets=None,
             base_precision="float32", lora_save="merged"):
    """Fine-tune GPT-2 on `dataset`, writing the run folder `checkpoint_dir/run_name`.

    gpt-2-simple 0.8.1's signature and defaults. Differences, by design: gradients of the
    `accumulate_gradients` minibatches are averaged (gpt-2-simple summed them; with Adam this
    barely matters, with SGD divide the learning rate you used there by accumulate_gradients);
    the optimizer and data-sampling state are saved, so a resume continues exactly; a dataset
    shorter than the context trains on windows of its own length; resuming does not need the
    base model folder; samples may be longer than the context; `multi_gpu` means data
    parallelism (gpt-2-simple split layers across GPUs).

    Args:
        sess: a `Session`; after training it holds the trained model, ready for `generate`.
        dataset: a .txt/.csv/.npz file, a folder or a glob of them.
        steps: optimizer steps in this call; -1 trains until Ctrl-C or SIGTERM (which save).
        model_name, model_dir: the base model folder `model_dir/model_name` (any folder in the
            OpenAI layout) used when the run starts fresh.
        combine: characters of consecutive small text files joined into one chunk.
        batch_size: sequences per minibatch (over all devices together).
        learning_rate: constant learning rate.
        accumulate_gradients: minibatches per optimizer step.
        restore_from: 'latest' (the run's newest checkpoint, or the base model if the run has
            none), 'fresh' (the base model; the step counter restarts) or a run folder or
            checkpoint path to start from.
        run_name, checkpoint_dir: the run folder.
        sample_every, sample_length, sample_num: training samples every N steps (<= 0: never).
        multi_gpu: data-parallel training on all local GPUs (`tf.distribute.MirroredStrategy`).
        save_every: steps between checkpoints (<= 0: only at the end).
        print_every: steps between progress lines.
        max_checkpoints: checkpoints kept in the run folder.
        use_memory_saving_gradients: recompute each transformer block in the backward pass
            (`tf.recompute_grad`): less activation memory, about a third more compute.
        only_train_transformer_layers: freeze wte, wpe and ln_f.
        optimizer: 'adam', 'adafactor' (factored second moments: far smaller state) or 'sgd'.
        overwrite: with restore_from='latest', delete the run's older checkpoints and event
            files and save the restored weights at once.
        reuse: accepted for compatibility; it means nothing without a global graph.
        seed: makes data sampling and training samples reproducible.
        sample_dir: parent folder of the training samples (`sample_dir/run_name/samples-N`).
        strategy: a `tf.distribute.Strategy`, or 'mirrored', 'multi_worker' (machines listed in
            TF_CONFIG) or 'tpu'; checkpoints keep the single-device format.
        precision: 'float32', 'mixed_float16' (with dynamic loss scaling) or 'mixed_bfloat16':
            the compute dtype; weights, optimizer state and checkpoints stay float32.
        val_dataset: a held-out text (any `dataset` form) to report validation loss on.
        val_every: steps between validations (<= 0: at every save); also before the first step.
        val_batch_size, val_batch_count: the fixed validation sample, drawn once with seed 1.
        lora_rank: 0 trains every weight (full fine-tuning); r > 0 freezes them and trains rank-r
            adapters (LoRA) on lora_targets; saves still hold the whole model unless lora_save.
        lora_alpha: the adapters' scale is lora_alpha / lora_rank (default: lora_rank, scale 1).
        lora_targets: layers with adapters, from 'c_attn', 'attn/c_proj', 'c_fc', 'mlp/c_proj'
            (a list or a comma-separated string; default: all four).
        base_precision: storage of the frozen base with LoRA: 'float32', 'bfloat16' or 'float16'
            (half the memory; adapters and their optimizer state stay float32).
        lora_save: 'merged' (model-N holds the weights with the adapters folded in, readable by
            every tool) or 'adapters' (model-N holds the adapters alone, megabytes, and needs the
            base model folder to load).

    Returns:
        A `TrainResult`.
    """
    opts = TrainOptions(
        steps=as_int("steps", steps), model_name=model_name, model_dir=model_dir, combine=combine,
        batch_size=batch_size, learning_rate=learning_rate, accumulate_gradients=accumulate_gradients,
        restore_from=restore_from, run_name=run_name, checkpoint_dir=checkpoint_dir, sample_every=sample_every,
        sample_length=sample_length, sample_num=sample_num, save_every=save_every, print_every=print_every,
        max_checkpoints=max_checkpoints, only_train_transformer_layers=only_train_transformer_layers,
        optimizer=optimizer, overwrite=overwrite, seed=seed, sample_dir=sample_dir,
        use_memory_saving_gradients=bool(use_memory_saving_gradients), precision=precision,
        val_dataset=val_dataset, val_every=as_int("val_every", val_every), val_batch_size=val_batch_size,
        val_batch_count=val_batch_count, lora_rank=as_int("lora_rank", lora_rank), lora_alpha=lora_alpha,
        lora_targets=lora_targets, base_precision=base_precision, lora_save=lora_save,
    )
    _warn_unimplemented(reuse=reuse)
    strategy = _strategy(opts, strategy, multi_gpu)
    run = _prepare_run(opts, dataset, strategy)
    trainer = _build_trainer(run, opts, strategy)
    sess.set_model(run.model, run.enc, run.run_dir)
    if opts.overwrite and run.resuming and run.chief:
        trainer.save(trainer.counter - 1)  # first, so the run always has a checkpoint
        resume.remove_older_files(run.run_dir)
    losses = _train(sess, run, trainer, opts)
    return TrainResult(run_dir=run.run_dir, step=trainer.counter - 1, losses=losses)


# ---------------------------------------------------------------------------------------------
# The steps of a run


@dataclasses.dataclass
class _Run:
    """What a run trains: its folder, the weights it starts from, the encoded dataset."""

    run_dir: str
    source_dir: str  # where the weights come from: the run folder or the base model
    prefix: str  # the checkpoint they are read from
    resuming: bool  # continuing this run's own history (optimizer and data state included)
    chief: bool  # this process writes the run folder
    model: object
    enc: object
    chunks: list
    window: int  # tokens per training sequence
    validation: np.ndarray = None  # the fixed validation sample, or None


def _strategy(opts, strategy, multi_gpu):
    """The tf.distribute strategy, checking that the batch splits evenly over its replicas."""
    strategy = resolve_strategy(strategy, multi_gpu)
    replicas = strategy.num_replicas_in_sync
    if opts.batch_size % replicas:
        raise ValueError(f"batch_size={opts.batch_size} must be a multiple of the {replicas} replicas training "
                         f"together; pass batch_size={replicas * max(1, opts.batch_size // replicas)}")
    return strategy


def _prepare_run(opts, dataset, strategy):
    """Load the starting weights, the encoder and the dataset; create the run folder."""
    run_dir = run_folder(opts.checkpoint_dir, opts.run_name)
    source_dir, prefix, resuming = resume.weights_source(opts, run_dir)
    saved_adapters = lora_run.check_resume(opts, run_dir, prefix, resuming)
    print("Loading checkpoint", prefix)
    with strategy.scope():
        model = lora_run.load_model(opts, run_dir, source_dir, prefix, saved_adapters)
    enc = get_encoder(source_dir)
    chunks = dataset_module.load_dataset(enc, dataset, opts.combine)
    window = min(model.hparams.n_ctx, max(len(c) for c in chunks))
    if window < 2:
        raise ValueError(f"dataset {dataset!r} has no chunk of 2 or more tokens, so there is nothing to predict; "
                         "pass more text")
    validation = validation_sample(enc, opts, window) if opts.val_dataset is not None else None
    chief = is_chief(strategy)
    if chief:
        os.makedirs(run_dir, exist_ok=True)
        checkpoint.remove_temporaries(run_dir)  # what a killed save left behind
        resume.copy_metadata(source_dir, run_dir)
    return _Run(run_dir, source_dir, prefix, resuming, chief, model, enc, chunks, window, validation)


@dataclasses.dataclass
class _Trainer:
    """How a run trains: optimizer, data sampler, compiled steps and where the counter stands."""

    run: _Run
    opts: TrainOptions
    opt: object
    data: dataset_module.Sampler
    seed: int
    train_step: object
    eval_step: object
    loss_scale: LossScale
    counter: int  # the step about to run
    avg: tuple  # gpt-2-simple's running average: (decayed loss sum, decayed count)

    def save(self, step):
        if self.run.chief:
            resume.save(self.run.model, self.opt, self.run.run_dir, step, self.data, self.avg, self.seed, self.opts,
                        _printed_name(step, self.opts), self.loss_scale)


def _build_trainer(run, opts, strategy):
    """The optimizer and data sampler (with their resumed state) and the compiled steps."""
    model = run.model
    names = [n for n in model.weights if n.startswith("model/h") or not opts.only_train_transformer_layers]
    weights = lora_run.trainable_weights(model, names)  # LoRA: the adapters only
    with strategy.scope():
        opt = make_optimizer(opts.optimizer, weights, opts.learning_rate, strategy)
        loss_scale = LossScale() if opts.precision == "mixed_float16" else None
    state = resume.load_training_state(run.prefix, opt) if run.resuming else None
    seed = state["seed"] if state else (opts.seed if opts.seed is not None else _random_seed())
    if state and loss_scale is not None and "loss_scale" in state:
        loss_scale.set_state(state["loss_scale"])
    data = dataset_module.Sampler(run.chunks, seed=seed)
    if state:
        data.set_state(state["data_sampler"])
    if run.window < model.hparams.n_ctx:
        print(f"The dataset's longest chunk is {run.window} tokens, shorter than the context "
              f"({model.hparams.n_ctx}): training on {run.window}-token windows")
    if strategy.num_replicas_in_sync > 1:
        print("Training with", describe(strategy))
    train_step = compile_train_step(model, opt, list(weights), strategy=strategy, precision=opts.precision,
                                    recompute=opts.use_memory_saving_gradients, loss_scale=loss_scale)
    eval_step = compile_eval_step(model, precision=opts.precision) if run.validation is not None else None
    counter = (resume.step_of_run(run.prefix) + 1) if run.resuming else 1
    avg = tuple(state["avg_loss"]) if state else (0.0, 0.0)
    return _Trainer(run, opts, opt, data, seed, train_step, eval_step, loss_scale, counter, avg)


def _train(sess, run, trainer, opts):
    """gpt-2-simple's loop: validate, save and sample on their cadences, then one step. Returns the losses."""
    writer = tf.summary.create_file_writer(run.run_dir) if run.chief else tf.summary.create_noop_writer()
    losses = {}
    counter_base = trainer.counter
    val_every = opts.val_every if opts.val_every > 0 else opts.save_every
    tokens_per_step = opts.accumulate_gradients * opts.batch_size * run.window
    start = time.time()
    print("Training...")
    with contextlib.closing(writer), _StopOnSignal() as stop, writer.as_default():
        if run.validation is not None:
            validate(trainer.eval_step, run.validation, trainer.counter - 1, start)
        while True:
            counter = trainer.counter
            last = counter - 1
            finished = (opts.steps > 0 and counter == counter_base + opts.steps) or stop.requested
            if stop.requested:
                print("interrupted")
            if run.validation is not None and last > counter_base - 1 and (
                    finished or (val_every > 0 and last % val_every == 0)):
                validate(trainer.eval_step, run.validation, last, start)
            if finished:
                trainer.save(last)
                break
            if opts.save_every > 0 and last % opts.save_every == 0 and counter > 1:
                trainer.save(last)
            if opts.sample_every > 0 and last % opts.sample_every == 0 and counter > 1 and run.chief:
                generate_samples(sess, trainer.data, opts, counter, trainer.seed)
            losses[counter] = _step(trainer, opts, run.window, tokens_per_step)
            if counter % opts.print_every == 0:
                avg = trainer.avg = (trainer.avg[0] * 0.99 + losses[counter], trainer.avg[1] * 0.99 + 1.0)
                log_scalars(counter, avg_loss=avg[0] / avg[1])
                print(f"[{counter} | {time.time() - start:2.2f}] loss={losses[counter]:2.2f} avg={avg[0] / avg[1]:2.2f}")
            trainer.counter += 1
    return losses


def _step(trainer, opts, window, tokens_per_step):
    """One optimizer step on `accumulate_gradients` fresh minibatches; returns its loss."""
    batches = np.stack([trainer.data.sample_batch(opts.batch_size, window) for _ in range(opts.accumulate_gradients)])
    step_start = time.time()
    loss = float(trainer.train_step(tf.constant(batches, tf.int32)))
    log_scalars(trainer.counter, loss=loss, learning_rate=opts.learning_rate,
                tokens_per_sec=tokens_per_step / max(time.time() - step_start, 1e-9))
    return loss


def _printed_name(step, opts):
    """The name of a save as gpt-2-simple prints it: `checkpoint/run1/model-N`."""
    return os.path.join(opts.checkpoint_dir, opts.run_name, f"model-{step}")


# ---------------------------------------------------------------------------------------------
# Signals, small helpers


class _StopOnSignal:
    """Turn SIGINT (Ctrl-C, Colab's interrupt) and SIGTERM (preemption) into a request to save and stop.

    The loop checks `requested` between steps, so a save never records a half-finished step. A
    second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _random_seed():
    return int(np.random.default_rng().integers(2**31))


def _warn_unimplemented(**flags):
    for name, value in flags.items():
        if value:
            warnings.warn(f"finetune({name}=True) has no effect in TensorFlow 2 (there is no global graph "
                          "to reuse); it is ignored", stacklevel=3)

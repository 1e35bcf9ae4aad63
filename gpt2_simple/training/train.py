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
import time

import numpy as np
import tensorflow as tf

from encoder import get_encoder

from ..formats import chat_template, checkpoint, run_record
from ..model.names import run_folder
from . import chats, documents, lora_run, resume
from . import dataset as dataset_module
from .distribute import describe, is_chief, lost_workers, stop_agreement, strategy_for_batch
from .early_stopping import EarlyStopping, after_validation
from .optimizer import make_optimizer
from .options import TrainOptions, TrainResult, as_int, card_settings, make_options, warn_unimplemented
from .plateau import Plateau
from .progress import StepClock, generate_samples, log_scalars, validate, validation_sample
from .schedule import Schedule
from .signals import StopOnSignal
from .step import LossScale, compile_eval_step, compile_train_step
from .windows import WindowSampler


def finetune(sess, dataset, steps=-1, model_name="124M", model_dir="models", combine=50000, batch_size=1,
             learning_rate=0.0001, accumulate_gradients=5, restore_from="latest", run_name="run1",
             checkpoint_dir="checkpoint", sample_every=100, sample_length=1023, sample_num=1, multi_gpu=False,
             save_every=1000, print_every=1, max_checkpoints=1, use_memory_saving_gradients=False,
             only_train_transformer_layers=False, optimizer="adam", overwrite=False, reuse=False, *, seed=None,
             sample_dir="samples", strategy=None, precision="float32", val_dataset=None, val_every=0,
             val_batch_size=2, val_batch_count=40, save_optimizer="full", line_by_line=False, text_field="text",
             learning_rate_schedule="constant", warmup_steps=0, min_learning_rate=0.0, weight_decay=0.0,
             max_grad_norm=None, keep_best=False, early_stopping_patience=None, lora_rank=0, lora_alpha=None,
             lora_targets=None, base_precision="float32", lora_save="merged", train_on="completion",
             chat_template=None, packing=None):
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
        dataset: a .txt/.csv/.jsonl/.npz file, a folder or a glob of them (conversations and
            prompt/completion pairs too: docs/chat.md).
        steps: optimizer steps in this call; -1 trains until Ctrl-C or SIGTERM (which save).
        model_name: the base model used when the run starts fresh: a released size ('124M',
            '355M', '774M', '1558M'), the name of any folder in `model_dir` in the OpenAI or
            Hugging Face layout, or a GPT-2 on the Hugging Face Hub, `hf://ORG/NAME`.
        model_dir: the parent folder of the base model folders (`model_dir/model_name`).
        combine: characters of consecutive small text files joined into one chunk.
        batch_size: sequences per minibatch (over all devices together).
        learning_rate: constant learning rate.
        accumulate_gradients: minibatches per optimizer step.
        restore_from: 'latest' (the run's newest checkpoint, or the base model if the run has
            none), 'fresh' (the base model; the step counter restarts) or a run folder or
            checkpoint path to start from.
        run_name: the run's name; its folder is `checkpoint_dir/run_name`.
        checkpoint_dir: the parent folder of the run folders.
        sample_every: steps between training samples (<= 0: never).
        sample_length: tokens in each training sample.
        sample_num: training samples drawn each time.
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
        strategy: a `tf.distribute.Strategy`, or 'mirrored' or 'multi_worker' (machines listed in
            TF_CONFIG); checkpoints keep the single-device format. 'tpu' is refused: TPU runtimes
            are not supported (docs/platforms.md).
        precision: 'float32', 'mixed_float16' (with dynamic loss scaling) or 'mixed_bfloat16':
            the compute dtype; weights, optimizer state and checkpoints stay float32.
        val_dataset: a held-out text (any `dataset` form) to report validation loss on.
        val_every: steps between validations (<= 0: at every save); also before the first step.
        val_batch_size: sequences per validation batch.
        val_batch_count: validation batches; the fixed validation sample (val_batch_count x
            val_batch_size sequences) is drawn once with seed 1.
        save_optimizer: what each save keeps of the optimizer, beside the weights: 'full' (a
            resume continues exactly; with Adam the file is twice the weights), 'bfloat16' (the
            moments rounded to bfloat16: half that, and a resume continues almost exactly) or
            'none' (weights only, gpt-2-simple's size; a resume restarts the optimizer's moments).
        line_by_line: one document per non-empty .txt line, CSV row or .jsonl record, joined
            with the end-of-text id; windows start at a document, generate gives one per sample.
        text_field: the key of .jsonl records that holds the text.
        learning_rate_schedule: 'constant', 'linear' or 'cosine' (decaying to min_learning_rate
            at the last step of this call).
        warmup_steps: steps of linear warmup from 0 to learning_rate (any schedule).
        min_learning_rate: where 'linear' and 'cosine' end.
        weight_decay: decoupled weight decay (AdamW), not on biases, LayerNorm or embeddings.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        keep_best: with val_dataset, also keep `model-best` (the lowest validation loss; load
            it with checkpoint='best').
        early_stopping_patience: with val_dataset, stop after this many validations without
            a new lowest loss (None: never).
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
        train_on: for conversations and pairs (docs/chat.md): 'completion' (the replies, each with
            its end-of-text) or 'all' (every token).
        chat_template: 'gpt2', 'dialogpt' or a Jinja file, kept in the run folder (None: the
            run's, else its base model's, else 'gpt2').
        packing: examples share a window, each seeing only itself (None: for conversations and
            pairs; True also packs line_by_line's documents).

    Returns:
        A `TrainResult`.
    """
    opts = make_options(
        steps=as_int("steps", steps), model_name=model_name, model_dir=model_dir, combine=combine,
        batch_size=batch_size, learning_rate=learning_rate, accumulate_gradients=accumulate_gradients,
        restore_from=restore_from, run_name=run_name, checkpoint_dir=checkpoint_dir, sample_every=sample_every,
        sample_length=sample_length, sample_num=sample_num, save_every=save_every, print_every=print_every,
        max_checkpoints=max_checkpoints, only_train_transformer_layers=only_train_transformer_layers,
        optimizer=optimizer, overwrite=overwrite, seed=seed, sample_dir=sample_dir,
        use_memory_saving_gradients=bool(use_memory_saving_gradients), precision=precision,
        val_dataset=val_dataset, val_every=as_int("val_every", val_every), val_batch_size=val_batch_size,
        val_batch_count=val_batch_count, save_optimizer=save_optimizer,
        line_by_line=bool(line_by_line), text_field=text_field,
        learning_rate_schedule=learning_rate_schedule, warmup_steps=as_int("warmup_steps", warmup_steps),
        min_learning_rate=min_learning_rate, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
        keep_best=bool(keep_best), early_stopping_patience=early_stopping_patience,
        lora_rank=as_int("lora_rank", lora_rank), lora_alpha=lora_alpha,
        lora_targets=lora_targets, base_precision=base_precision, lora_save=lora_save, train_on=train_on,
        chat_template=chat_template, packing=packing,
    )
    warn_unimplemented(reuse=reuse)
    strategy = strategy_for_batch(strategy, multi_gpu, opts.batch_size)
    run = _prepare_run(opts, dataset, strategy)
    trainer = _build_trainer(run, opts, strategy)
    sess.set_model(run.model, run.enc, run.run_dir)
    if opts.overwrite and run.resuming and run.chief:
        trainer.save(trainer.counter - 1)  # first, so the run always has a checkpoint
        resume.remove_older_files(run.run_dir)
    with lost_workers(strategy, run.run_dir):
        losses = _train(sess, run, trainer, opts)
    return TrainResult(run_dir=run.run_dir, step=trainer.counter - 1, losses=losses)


# ---------------------------------------------------------------------------------------------
# The steps of a run


@dataclasses.dataclass
class _RunSetup:
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


def _prepare_run(opts, dataset, strategy):
    """Load the starting weights, the encoder and the dataset; create the run folder."""
    run_dir = run_folder(opts.checkpoint_dir, opts.run_name)
    for path in (dataset, opts.val_dataset):  # a missing file fails now, before any weights load
        if path is not None:
            dataset_module.resolve_paths(path)
    source_dir, prefix, resuming = resume.weights_source(opts, run_dir)
    saved_adapters = lora_run.check_resume(opts, run_dir, prefix, resuming)
    print("Loading checkpoint", prefix)
    with strategy.scope():
        model = lora_run.model_to_train(opts, run_dir, source_dir, prefix, saved_adapters)
    enc = get_encoder(source_dir)
    template = chats.run_template(opts.chat_template, dataset, run_dir, source_dir)
    chunks, window = documents.training_data(enc, dataset, opts, template, model.hparams.n_ctx)
    validation = None if opts.val_dataset is None else validation_sample(enc, opts, window, template)
    chief = is_chief(strategy)
    if chief:
        os.makedirs(run_dir, exist_ok=True)
        checkpoint.remove_temporaries(run_dir)  # what a killed save left behind
        resume.copy_metadata(source_dir, run_dir)
        run_record.record_documents(run_dir, enc.eot_token if opts.line_by_line else None)
        run_record.record_training(run_dir, dataset, None if resuming else source_dir, opts.line_by_line,
                                   card_settings(opts, examples=chats.is_structured(dataset)))
        if template is not None:
            chat_template.write_run_template(run_dir, template)
    return _RunSetup(run_dir, source_dir, prefix, resuming, chief, model, enc, chunks, window, validation)


@dataclasses.dataclass
class _Trainer:
    """How a run trains: optimizer, data sampler, compiled steps and where the counter stands."""

    run: _RunSetup
    opts: TrainOptions
    opt: object
    data: WindowSampler
    seed: int
    train_step: object
    eval_step: object
    loss_scale: LossScale
    counter: int  # the step about to run
    avg: tuple  # gpt-2-simple's running average: (decayed loss sum, decayed count)
    schedule: Schedule = None  # the learning rate of each step
    stopping: EarlyStopping = None  # validation losses: the best so far, patience
    plateau: Plateau = dataclasses.field(default_factory=Plateau)  # the "loss has levelled off" note
    agree: object = None  # several workers: `distribute.stop_agreement`, so all stop at one step

    def save(self, step):
        if self.run.chief:
            resume.save(self.run.model, self.opt, self.run.run_dir, step, self.data, self.avg, self.seed, self.opts,
                        _printed_name(step, self.opts), self.loss_scale,
                        extra={"early_stopping": self.stopping.get_state()})
            self.plateau.record(step, self.avg)


def _build_trainer(run, opts, strategy):
    """The optimizer and data sampler (with their resumed state) and the compiled steps."""
    model = run.model
    names = [n for n in model.weights if n.startswith("model/h") or not opts.only_train_transformer_layers]
    weights = lora_run.trainable_weights(model, names)  # LoRA: the adapters only
    with strategy.scope():
        opt = make_optimizer(opts.optimizer, weights, opts.learning_rate, strategy,
                             weight_decay=opts.weight_decay, max_grad_norm=opts.max_grad_norm)
        loss_scale = LossScale() if opts.precision == "mixed_float16" else None
    state = resume.load_training_state(run.prefix, opt) if run.resuming else None
    fresh = opts.seed if opts.seed is not None else int(np.random.default_rng().integers(2**31))
    seed = state["seed"] if state else fresh
    if state and loss_scale is not None and "loss_scale" in state:
        loss_scale.set_state(state["loss_scale"])
    data = documents.make_sampler(run.chunks, run.enc, opts, seed)
    examples = isinstance(run.chunks, chats.Examples)
    if state:
        data.set_state(state["data_sampler"])
    if run.window < model.hparams.n_ctx and not examples:
        print(f"The dataset's longest chunk is {run.window} tokens, shorter than the context "
              f"({model.hparams.n_ctx}): training on {run.window}-token windows")
    if strategy.num_replicas_in_sync > 1:
        print("Training with", describe(strategy))
    train_step = compile_train_step(model, opt, list(weights), strategy=strategy, precision=opts.precision,
                                    recompute=opts.use_memory_saving_gradients, loss_scale=loss_scale,
                                    examples=examples)
    eval_step = run.validation is not None and compile_eval_step(model, precision=opts.precision, examples=examples)
    counter = (resume.step_of_run(run.prefix) + 1) if run.resuming else 1
    avg = tuple(state["avg_loss"]) if state else (0.0, 0.0)
    schedule = Schedule.of_run(opts, last_step=counter - 1 + opts.steps)
    stopping = EarlyStopping.of_run(opts, state)
    return _Trainer(run, opts, opt, data, seed, train_step, eval_step, loss_scale, counter, avg, schedule, stopping,
                    agree=stop_agreement(strategy))


def _train(sess, run, trainer, opts):
    """gpt-2-simple's loop: validate, save and sample on their cadences, then one step. Returns the losses."""
    writer = tf.summary.create_file_writer(run.run_dir) if run.chief else tf.summary.create_noop_writer()
    losses = {}
    counter_base = trainer.counter
    val_every = opts.val_every if opts.val_every > 0 else opts.save_every
    tokens_per_step = opts.accumulate_gradients * opts.batch_size * run.window
    start = time.time()
    clock = StepClock(opts.steps)
    print("Training...")
    with contextlib.closing(writer), StopOnSignal() as stop, writer.as_default():
        if run.validation is not None:
            _validate(trainer, run, trainer.counter - 1, start, val_every)
        while True:
            counter = trainer.counter
            last = counter - 1
            requested = trainer.agree(stop.requested) if trainer.agree else stop.requested  # any worker's
            finished = (opts.steps > 0 and counter == counter_base + opts.steps) or requested
            if requested:
                print("interrupted")
            if run.validation is not None and last > counter_base - 1 and (
                    finished or (val_every > 0 and last % val_every == 0)):
                finished = _validate(trainer, run, last, start, val_every) or finished
            if finished:
                trainer.save(last)
                break
            if opts.save_every > 0 and last % opts.save_every == 0 and counter > 1:
                trainer.save(last)
            if opts.sample_every > 0 and last % opts.sample_every == 0 and counter > 1 and run.chief:
                generate_samples(sess, trainer.data, opts, counter, trainer.seed)
            if counter == counter_base:
                print("Compiling the training step (the first step traces and compiles the model: "
                      "it takes longer than the ones after it) ...")
            step_start = time.time()
            losses[counter] = _step(trainer, opts, run.window, tokens_per_step)
            clock.record(counter - counter_base, time.time() - step_start)
            if counter % opts.print_every == 0:
                avg = trainer.avg = (trainer.avg[0] * 0.99 + losses[counter], trainer.avg[1] * 0.99 + 1.0)
                log_scalars(counter, avg_loss=avg[0] / avg[1])
                rate = f" lr={trainer.schedule(counter):.3e}" if trainer.schedule.varies else ""
                print(f"[{counter} | {time.time() - start:2.2f}] loss={losses[counter]:2.2f} avg={avg[0] / avg[1]:2.2f}{rate}")
            clock.report(counter - counter_base + 1)
            trainer.counter += 1
    return losses


def _step(trainer, opts, window, tokens_per_step):
    """One optimizer step on `accumulate_gradients` fresh minibatches; returns its loss."""
    batches = np.stack([trainer.data.sample_batch(opts.batch_size, window) for _ in range(opts.accumulate_gradients)])
    rate = trainer.schedule(trainer.counter)
    trainer.opt.learning_rate.assign(rate)
    step_start = time.time()
    loss = float(trainer.train_step(tf.constant(batches, tf.int32)))
    scalars = dict(loss=loss, learning_rate=rate, tokens_per_sec=tokens_per_step / max(time.time() - step_start, 1e-9))
    if opts.max_grad_norm is not None:
        scalars["grad_norm"] = float(trainer.opt.grad_norm.numpy())
    log_scalars(trainer.counter, **scalars)
    return loss


def _validate(trainer, run, step, start, val_every):
    """Validate at `step`; feed early stopping and the best checkpoint. True when the run should stop."""
    loss = validate(trainer.eval_step, run.validation, step, start)
    return after_validation(trainer.stopping, step, loss, on_cadence=val_every > 0 and step % val_every == 0,
                            model=run.model, run_dir=run.run_dir, chief=run.chief)


def _printed_name(step, opts):
    """The name of a save as gpt-2-simple prints it: `checkpoint/run1/model-N`."""
    return os.path.join(opts.checkpoint_dir, opts.run_name, f"model-{step}")


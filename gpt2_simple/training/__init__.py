"""Everything `finetune` drives: text to token windows, the compiled step, and the run folder's history.

This stage owns, in the order a run uses them:

- its options, checked once into a frozen `TrainOptions` (`options.py`), and the run as named
  steps with gpt-2-simple's loop and printed lines (`train.py`);
- text to tokens: a dataset path to token chunks (`dataset.py`), a file as text or as its
  documents (`records.py`), documents mode (`documents.py`), the encoded-file cache
  (`token_cache.py`), and pre-encoding, `encode_dataset`/`encode_csv` (`encoding.py`);
  conversations and prompt/completion pairs to tokens with a trained mask (`chats.py`);
- tokens to windows: the one window sampler of both modes (`windows.py`), and examples one a
  row or packed several to a window (`packing.py`);
- the step: the compiled step and loss (`step.py`), the loss a slice of the vocabulary at a time
  (`vocab_chunks.py`), the update rules (`optimizer.py`), the
  learning-rate schedule (`schedule.py`), devices (`distribute.py`), LoRA's options, frozen base
  and saves (`lora_run.py`);
- the run's history: where a run starts and what an exact-resume save holds (`resume.py`),
  validation, TensorBoard scalars, training samples and the time left (`progress.py`), early
  stopping and the best checkpoint (`early_stopping.py`), Ctrl-C and SIGTERM as a request to
  save and stop (`signals.py`), the note that the loss has levelled off (`plateau.py`);
- after the run: held-out scores per checkpoint, `evaluate` (`evaluate.py`), and the run's
  training tokens for the copy index (`copy_source.py`);
- a random-weight model to train from scratch (`scratch.py`).

The weight files themselves are `formats/`'s; training samples are drawn with `generation/`'s
sampler through the session.
"""

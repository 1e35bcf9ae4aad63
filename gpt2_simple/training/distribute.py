"""Choosing the devices `finetune` trains on: TensorFlow's own `tf.distribute` strategies.

This module owns turning `finetune`'s `multi_gpu=` and `strategy=` into a
`tf.distribute.Strategy`, and telling whether this process is the one that writes files (the
chief) when several machines train together. The data-parallel step itself is `step.py`'s.

- one device (the default): TensorFlow's default strategy;
- `multi_gpu=True` or `strategy='mirrored'`: `MirroredStrategy` over all local GPUs;
- `strategy='multi_worker'`: `MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG`
  environment variable of each machine;
- any `tf.distribute.Strategy` object.
`strategy='tpu'` is refused with the reason: TPU runtimes are not supported. Colab's TPU runtime
no longer comes with TensorFlow, and on its v2-8 runtime TensorFlow 2.18-2.19 with
tensorflow-tpu sees no TPU (tensorflow/tensorflow#96203); no TPU was at hand to test one.
"""
import json
import os
import warnings

import tensorflow as tf

STRATEGIES = ("mirrored", "multi_worker")


def resolve_strategy(strategy=None, multi_gpu=False):
    """The `tf.distribute.Strategy` for `finetune(strategy=..., multi_gpu=...)`.

    Raises:
        ValueError: `strategy` is neither None, a name in `STRATEGIES` nor a Strategy.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy is None and not multi_gpu:
        return tf.distribute.get_strategy()
    if strategy is None or strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if multi_gpu and len(gpus) < 2:
            warnings.warn(f"multi_gpu=True but this machine has {len(gpus)} GPU(s); training on one device",
                          stacklevel=3)
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy()
    if strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy='multi_worker' needs the TF_CONFIG environment variable on every machine "
                             "(its cluster and this machine's task); see docs/big-models.md")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if strategy == "tpu":
        raise ValueError("strategy='tpu' is not supported: TPU runtimes are not (Colab's has no TensorFlow and "
                         "TensorFlow 2.18-2.19 sees no TPU there, tensorflow/tensorflow#96203); use strategy=None "
                         f"(one device), one of {STRATEGIES} or a tf.distribute.Strategy object")
    raise ValueError(f"strategy={strategy!r} is not supported; pass one of {STRATEGIES} "
                     "or a tf.distribute.Strategy object")


def is_chief(strategy):
    """True unless this process is a non-chief worker of a multi-machine strategy.

    Only the chief writes the run folder: the workers hold identical weights, and several
    writers of one folder would race.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    jobs = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, resolver.task_id
    if "chief" in jobs:
        return task_type == "chief"
    return task_type in (None, "worker") and not task_id


def describe(strategy):
    """One line for the log: which strategy and how many replicas."""
    replicas = strategy.num_replicas_in_sync
    name = type(strategy).__name__
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = config.get("task")
    where = f", task {task.get('type')} {task.get('index')}" if task else ""
    return f"{name} with {replicas} replica{'s' if replicas != 1 else ''}{where}"


def strategy_for_batch(strategy, multi_gpu, batch_size):
    """The tf.distribute strategy, checking that the batch splits evenly over its replicas."""
    strategy = resolve_strategy(strategy, multi_gpu)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {replicas} replicas training "
                         f"together; pass batch_size={replicas * max(1, batch_size // replicas)}")
    return strategy

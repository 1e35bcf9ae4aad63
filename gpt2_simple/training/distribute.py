"""Choosing the devices `finetune` trains on: TensorFlow's own `tf.distribute` strategies.

This module owns turning `finetune`'s `multi_gpu=` and `strategy=` into a
`tf.distribute.Strategy`, and telling whether this process is the one that writes files (the
chief) when several machines train together. The data-parallel step itself is `step.py`'s.

- one device (the default): TensorFlow's default strategy;
- `multi_gpu=True` or `strategy='mirrored'`: `MirroredStrategy` over all local GPUs;
- `strategy='multi_worker'`: `MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG`
  environment variable of each machine;
- any `tf.distribute.Strategy` object.
Several workers also agree, every step, on whether any of them was asked to stop (SIGTERM to one
worker stops them all at the same step: `stop_agreement`), and a worker that is lost mid-step
ends the others with one line naming it (`lost_workers`), never a hang.
`strategy='tpu'` is refused with the reason: TPU runtimes are not supported. Colab's TPU runtime
no longer comes with TensorFlow, and on its v2-8 runtime TensorFlow 2.18-2.19 with
tensorflow-tpu sees no TPU (tensorflow/tensorflow#96203); no TPU was at hand to test one.
"""
import contextlib
import json
import os
import re
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


def join_cluster(workers, worker_index):
    """The command line's `--workers host:port,... --worker_index N`: this machine's `TF_CONFIG` (one
    already set wins), before TensorFlow reads it. ValueError naming a flag that is off."""
    hosts = [h.strip() for h in (workers or "").split(",") if h.strip()]
    if not hosts or any(":" not in h for h in hosts):
        raise ValueError(f"--workers {workers!r} must list every worker as host:port, comma-separated")
    if worker_index is None or not 0 <= worker_index < len(hosts):
        raise ValueError(f"--worker_index {worker_index} must be this machine's place in --workers, "
                         f"from 0 to {len(hosts) - 1}")
    if "TF_CONFIG" not in os.environ:
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker",
                                                                                     "index": worker_index}})


class WorkerLost(ConnectionError):
    """Another worker of a multi-worker run stopped answering mid-step (killed, or its machine gone)."""


def _workers(strategy):
    """The cluster's worker addresses when `strategy` spans several processes, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return jobs if sum(len(tasks) for tasks in jobs.values()) > 1 else None


def stop_agreement(strategy):
    """For several workers: `agree(requested) -> bool`, true on every worker at the same step once any
    worker's own stop was requested (an all-reduce of one flag a step). None for one process."""
    if _workers(strategy) is None:
        return None

    @tf.function(input_signature=[tf.TensorSpec([], tf.bool)], autograph=False)
    def any_requested(flag):
        flags = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None) > 0

    return lambda requested: bool(any_requested(tf.constant(bool(requested))))


@contextlib.contextmanager
def lost_workers(strategy, run_dir):
    """Turn TensorFlow's error for a peer that is gone into `WorkerLost`: one line naming the worker."""
    workers = _workers(strategy)
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as e:
        task = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", str(e))
        peer = isinstance(e, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) or task is not None
        if workers is None or not peer:  # not a peer gone: the error as it is
            raise
        who = f"{task.group(1)} {task.group(2)} ({workers[task.group(1)][int(task.group(2))]})" \
            if task and task.group(1) in workers and int(task.group(2)) < len(workers[task.group(1)]) \
            else "another worker"
        raise WorkerLost(f"{who} stopped answering mid-step, so this worker stops too; the last complete save "
                         f"in {run_dir} stays loadable: restart every worker with restore_from='latest'") from e

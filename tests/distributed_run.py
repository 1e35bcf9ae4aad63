"""A child process for the tf.distribute tests: fine-tune a tiny model and print the result as JSON.

Usage: python distributed_run.py ROOT MODE [WORKER_INDEX PORTS]
  MODE 'mirrored': two logical CPU devices, a single-device run and a MirroredStrategy run.
  MODE 'mirrored_controls': the same with a schedule, weight decay and gradient clipping on.
  MODE 'worker':   one worker of a MultiWorkerMirroredStrategy cluster on 127.0.0.1:PORTS.
ROOT holds `models/tiny` and `data.txt` (made by the test).
"""
import hashlib
import json
import os
import sys

FINETUNE = dict(steps=3, model_name="tiny", batch_size=2, accumulate_gradients=2, sample_every=0, seed=5,
                learning_rate=1e-3)


def weights_digest(model):
    import numpy as np

    digest = hashlib.sha256()
    for variable in model.weights.values():
        digest.update(np.asarray(variable.numpy()).tobytes())
    return digest.hexdigest()


# SGD: the weights then move by the learning rate times the all-reduced gradients, which equal
# one device's up to summation order (Adam would lift that order to steps of its own size).
CONTROLS = dict(learning_rate_schedule="cosine", warmup_steps=1, weight_decay=0.1, max_grad_norm=0.05,
                optimizer="sgd", learning_rate=0.5)


def run(gpt2, root, name, strategy, extra=None):
    sess = gpt2.start_tf_sess()
    options = {**FINETUNE, **(extra or {})}
    result = gpt2.finetune(sess, os.path.join(root, "data.txt"), model_dir=os.path.join(root, "models"),
                           checkpoint_dir=os.path.join(root, name), strategy=strategy, **options)
    text = gpt2.generate(sess, length=6, top_k=1, seed=0, return_as_list=True)[0]
    return {"losses": result.losses, "digest": weights_digest(sess.model), "text": text}


def main(root, mode, index=None, ports=None):
    if mode == "worker":
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports.split(",")]}
        os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": int(index)}})
    import tensorflow as tf

    import gpt2_simple as gpt2

    if mode == "worker":
        print("RESULT", json.dumps(run(gpt2, root, f"worker{index}", "multi_worker")))
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    extra = CONTROLS if mode == "mirrored_controls" else None
    results = {"single": run(gpt2, root, "single", None, extra), "mirrored": run(gpt2, root, "mirrored", mirrored, extra)}
    print("RESULT", json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])

"""A child process for the Hub tests: pull a model by its id, through the environment's HF_* settings.

Usage: python hub_pull_run.py ROOT MODE
  MODE 'online': pull hf://test-org/tiny6 (filling the cache) and ask for an unknown repository.
  MODE 'offline': with HF_HUB_OFFLINE=1, the same from the cache; then fine-tune from the id (4 steps
  straight, and 2 + 2 resumed) and export the run.
Writes ROOT/MODE.json: the logits of `TOKENS`, the errors, the losses; ROOT/MODE-run.npy: the run's logits.
"""
import json
import os
import sys

TOKENS = [[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]]
RUN = dict(model_name="hf://test-org/tiny6", batch_size=2, accumulate_gradients=1, sample_every=0, seed=3,
           learning_rate=1e-3, save_every=0, print_every=10)


def error_of(call):
    try:
        call()
    except (OSError, ValueError) as e:
        return [type(e).__name__, str(e)]
    return None


def main(root, mode):
    import numpy as np

    import gpt2_simple as gpt2

    out = {"logits": gpt2.load_model("hf://test-org/tiny6")(np.array(TOKENS)).numpy().tolist(),
           "unknown": error_of(lambda: gpt2.load_model("hf://test-org/nope"))}
    if mode == "offline":
        sess = gpt2.load_gpt2(gpt2.start_tf_sess(), model_name="hf://test-org/tiny6")  # as serve --model_name does
        out["loaded_from"] = sess.folder
        out["generated"] = gpt2.generate(sess, prefix="The quick", length=4, top_k=1, return_as_list=True)[0]
        data = os.path.join(root, "data.txt")
        checkpoint_dir = os.path.join(root, "checkpoint")
        out["straight"] = gpt2.finetune(gpt2.start_tf_sess(), data, steps=4, run_name="straight",
                                        checkpoint_dir=checkpoint_dir, **RUN).losses
        gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="resumed", checkpoint_dir=checkpoint_dir, **RUN)
        out["resumed"] = gpt2.finetune(gpt2.start_tf_sess(), data, steps=2, run_name="resumed",
                                       checkpoint_dir=checkpoint_dir, **RUN).losses
        run = os.path.join(checkpoint_dir, "straight")
        np.save(os.path.join(root, "offline-run.npy"), gpt2.load_model(run)(np.array(TOKENS)).numpy())
        gpt2.export_hf(run, os.path.join(root, "exported"))
    with open(os.path.join(root, f"{mode}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""The notebook (scripts/finetune.ipynb): the blog post's Colab fields, run headless, and a disconnect survived.

Its code cells are executed in order in a fresh Python, with a cell of test settings inserted
after the cell tagged `parameters`: a tiny model in `models/124M` (so `download_gpt2` finds
every file and downloads nothing), a few steps, short texts. Google Drive is a plain folder
here (`GPT2_SIMPLE_DRIVE_DIR`): the notebook mounts the real one only inside Colab.
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf
from runs import ROOT, TINY_REAL_VOCAB, make_tiny_model, subprocess_env, write_text

NOTEBOOK = os.path.join(ROOT, "scripts", "finetune.ipynb")
# The post's fields, by its names, and the Colab form each must be.
FIELDS = {
    "use_google_drive": '{type:"boolean"}',
    "working_folder": '{type:"string"}',
    "training_data": '{type:"string"}',
    "select_model": '["124M", "355M", "774M", "1558M"]',
    "restore_from": '["Fresh", "Latest"]',
    "session_name": '{type:"string"}',
    "number_of_steps": '{type:"integer"}',
    "sample_every": '{type:"integer"}',
    "save_every": '{type:"integer"}',
    "prefix": '{type:"string"}',
    "length": '{type:"integer"}',
    "nsamples": '{type:"integer"}',
}


def _cells():
    with open(NOTEBOOK, encoding="utf-8") as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4
    return notebook["cells"]


def _parameters_cell():
    tagged = [c for c in _cells() if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    return "".join(tagged[0]["source"])


def test_parameters_cell_holds_the_posts_fields_as_colab_forms():
    source = _parameters_cell()
    fields = dict(re.findall(r"^(\w+) = .*?#@param (.+)$", source, re.M))
    assert {name: fields.get(name) for name in FIELDS} == FIELDS
    namespace = {}
    exec(source, namespace)  # plain Python: papermill can override any of it
    assert (namespace["select_model"], namespace["restore_from"], namespace["use_google_drive"]) == \
        ("124M", "Fresh", False)


def test_committed_without_outputs_or_shell_magics():
    cells = _cells()
    assert "Install requirements" in "".join(cells[1]["source"])  # the first code cell installs
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "commit the notebook without outputs"
            source = "".join(cell["source"])
            assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines()), source


def notebook_script(settings):
    """The notebook's code cells as one script, `settings` inserted after the parameters cell."""
    parts = []
    for cell in _cells():
        if cell["cell_type"] == "code":
            parts.append("".join(cell["source"]))
            if "parameters" in cell["metadata"].get("tags", []):
                parts.append(settings)
    return "\n\n".join(parts)


def run_notebook(root, settings, **env):
    proc = subprocess.run([sys.executable, "-c", notebook_script(settings)], cwd=root,
                          env=subprocess_env(**env), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


SETTINGS = ("training_data = 'mytext.txt'\nnumber_of_steps = 4\nsample_every = 2\nsave_every = 2\nlength = 12\n"
            "nsamples = 2\nlearning_rate = 1e-3\n")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, real_vocab_dir):
    make_tiny_model(tmp_path, real_vocab_dir, name="124M", hparams=TINY_REAL_VOCAB)
    write_text(tmp_path, name="mytext.txt")
    out = run_notebook(tmp_path, SETTINGS)
    run = tmp_path / "checkpoint" / "run1"
    assert (run / "counter").read_text() == "4\n" and (run / "model-4.index").is_file()
    assert "======== SAMPLE 1 ========" in out  # the training sample at step 2
    assert f"saved {os.path.join('.', 'checkpoint', 'run1')} at step 4" in out
    assert re.search(r"^\{'loss': \d+\.\d+\}$", out, re.M), out  # the plot cell's last value (print_every=10: no avg yet)
    texts = (tmp_path / "gpt2_gentext_run1.txt").read_text(encoding="utf-8")
    assert texts.count("=" * 20 + "\n") == 8  # nsamples * 4 texts, each followed by the delimiter
    # restore_from 'Latest' continuing the run: test_work_on_drive_survives_a_disconnect.


def _logged_losses(run_dir):
    """{step: loss} from the run's TensorBoard events (float32, as training computed them)."""
    losses = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss":
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


@pytest.mark.slow
def test_work_on_drive_survives_a_disconnect(tmp_path, real_vocab_dir):
    """Killed during training after a save, re-run with 'Latest': it continues from the save, exactly."""
    drive = tmp_path / "drive"
    work = drive / "gpt2"
    make_tiny_model(work, real_vocab_dir, name="124M", hparams=TINY_REAL_VOCAB)  # models/ on the drive
    write_text(work, name="mytext.txt")
    settings = ("use_google_drive = True\nworking_folder = 'gpt2'\ntraining_data = 'mytext.txt'\n"
                "number_of_steps = 8\nsample_every = 0\nsave_every = 3\nlearning_rate = 1e-3\nseed = 7\n"
                "length = 4\nnsamples = 1\n")
    proc = subprocess.Popen([sys.executable, "-u", "-c", notebook_script(settings)], cwd=tmp_path,
                            env=subprocess_env(GPT2_SIMPLE_DRIVE_DIR=str(drive)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # the size line is printed once the save is complete
            if line.startswith("  model-3: "):
                proc.send_signal(signal.SIGKILL)  # the runtime disconnects: no chance to save
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    run = work / "checkpoint" / "run1"
    assert (run / "counter").read_text() == "3\n" and not (run / "model-8.index").exists()
    assert not (tmp_path / "checkpoint").exists()  # nothing was kept off the drive
    out = run_notebook(tmp_path, settings + "restore_from = 'Latest'\nnumber_of_steps = 5\n",
                       GPT2_SIMPLE_DRIVE_DIR=str(drive))
    assert "Loading checkpoint " + str(run / "model-3") in out
    assert (run / "counter").read_text() == "8\n" and (work / "gpt2_gentext_run1.txt").is_file()
    resumed = _logged_losses(run)
    # The same run without the disconnect, in another working folder.
    straight = drive / "straight"
    make_tiny_model(straight, real_vocab_dir, name="124M", hparams=TINY_REAL_VOCAB)
    write_text(straight, name="mytext.txt")
    run_notebook(tmp_path, settings.replace("'gpt2'", "'straight'"), GPT2_SIMPLE_DRIVE_DIR=str(drive))
    expected = _logged_losses(straight / "checkpoint" / "run1")
    assert sorted(expected) == list(range(1, 9))
    assert {s: resumed[s] for s in range(4, 9)} == {s: expected[s] for s in range(4, 9)}

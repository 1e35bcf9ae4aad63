"""A new user's first hour: static packaging, a quiet console, honest feedback, small saves, clear errors."""
import os
import re
import socket
import subprocess
import sys

import pytest
from runs import ROOT, make_tiny_model, subprocess_env, write_text

import gpt2_simple as gpt2
from gpt2_simple import cli, quiet
from gpt2_simple.formats import download

# gpt-2-simple's progress line, a contract people parse: exactly this, nothing appended.
PROGRESS = re.compile(r"^\[(\d+) \| \d+\.\d\d\] loss=\d+\.\d\d avg=\d+\.\d\d$")


# ---------------------------------------------------------------------------------------------
# Packaging


def test_package_metadata_is_static():
    """TensorFlow comes from the [cpu] or [gpu] extra; setup.py probes nothing at build time."""
    from distutils.core import run_setup

    from setuptools import distutils  # noqa: F401  (setuptools' bundled copy)

    source = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    assert "metadata.version" not in source and "find_spec" not in source
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        dist = run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)
    assert not [r for r in dist.install_requires if r.lower().startswith("tensorflow")]
    assert dist.extras_require["cpu"] == ['tensorflow-cpu>=2.16; sys_platform != "darwin"',
                                          'tensorflow>=2.16; sys_platform == "darwin"']  # tests/test_install.py resolves them
    assert dist.extras_require["gpu"] == ["tensorflow[and-cuda]>=2.16"]
    assert "gpt2_simple" in dist.package_data and "data/*.txt" in dist.package_data["gpt2_simple"]


def test_without_tensorflow_import_names_the_install_command():
    # TensorFlow made unfindable, as on a machine without it.
    blocker = ("import importlib.util, sys\n"
               "find = importlib.util.find_spec\n"
               "importlib.util.find_spec = lambda name, package=None: (\n"
               "    None if name.split('.')[0] == 'tensorflow' else find(name, package))\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'tensorflow':\n"
               "            raise ModuleNotFoundError(name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "import gpt2_simple\n")
    proc = subprocess.run([sys.executable, "-c", blocker], env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: gpt2_simple needs TensorFlow") and "pip install tensorflow-cpu" in last


def test_import_does_not_start_tensorflow():
    proc = subprocess.run([sys.executable, "-c", "import sys, gpt2_simple; print('tensorflow' in sys.modules, "
                           "len(gpt2_simple.__all__))"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.split() == ["False", str(len(gpt2.__all__))], proc.stderr


# ---------------------------------------------------------------------------------------------
# A quiet console


NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796191079.256876   10617 port.cc:153] oneDNN custom operations are on. You may see\n",
    b"I0000 00:00:1796191016.164412    9348 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow\n",
    b"E0000 00:00:1796191016.164412    9348 cpu_feature_guard.cc:227] AVX-512 is not supported\n",
]


@pytest.mark.parametrize("line", range(len(NOISE)))
def test_known_notices_are_filtered_and_everything_else_kept(line):
    assert not quiet.keep(NOISE[line], 3, previous_kept=line != 3)
    for kept in (b"Traceback (most recent call last):\n", b"gpt2_simple: error: x\n", b"Warning: yours\n",
                 b"To enable the following instructions: a line of yours\n"):
        assert quiet.keep(kept, 3)
    assert quiet.keep(NOISE[4], 2) and not quiet.keep(NOISE[1], 2)  # level 2 keeps errors
    assert quiet.keep(NOISE[1], 0)


@pytest.mark.slow
def test_command_line_console_is_quiet():
    """`gpt2_simple generate --help` starts TensorFlow: nothing but the help reaches the console."""
    env = {k: v for k, v in subprocess_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "gpt2_simple.cli", "generate", "--help"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: gpt2_simple generate")
    assert proc.stderr == ""


# ---------------------------------------------------------------------------------------------
# Help and errors


def test_every_flag_has_its_own_help():
    for name, sub in cli.build_parser()._subparsers._group_actions[0].choices.items():
        helps = {}
        for action in sub._actions:
            if action.option_strings and action.help:
                helps.setdefault(action.help.replace(" (default: %(default)r)", ""), []).append(action.dest)
        shared = {text: dests for text, dests in helps.items() if len(dests) > 1}
        assert shared == {}, name
        assert all(text.strip() for text in helps), name
        assert not [t for t in helps if "tf.distribute.Strategy" in t], name  # nothing a shell cannot pass


def test_usage_error_is_one_line_pointing_at_help(capsys):
    assert cli.main(["finetune", "d.txt", "--steps", "abc"]) == 2
    err = capsys.readouterr().err
    assert err == ("gpt2_simple finetune: error: argument --steps: invalid int value: 'abc' "
                   "(see gpt2_simple finetune --help)\n")


def test_unknown_model_lists_the_released_ones_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_text(tmp_path)
    assert cli.main(["finetune", "data.txt", "--model_name", "125M"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model_name '125M' is not a released GPT-2 model" in err
    assert "'124M', '355M', '774M', '1558M'" in err and "download" not in err
    assert sorted(os.listdir(tmp_path)) == ["data.txt"]


def test_missing_dataset_fails_before_any_download(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(download, "_fetch", lambda *a, **k: pytest.fail("downloaded before checking the dataset"))
    assert cli.main(["finetune", "missing.txt"]) == 2
    assert "'missing.txt' names no files" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mirror_error_in_each_callers_terms(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(download, "MAX_TRIES", 2)
    monkeypatch.setattr(download, "_sleep", lambda s: None)
    url = f"http://127.0.0.1:{_closed_port()}"
    models = str(tmp_path / "models")
    with pytest.raises(gpt2.DownloadError) as info:
        gpt2.download_gpt2(model_dir=models, model_name="124M", base_url=url)
    python = str(info.value)
    assert f"download_gpt2(model_dir={models!r}, model_name='124M')" in python
    assert "base_url= or $GPT2_SIMPLE_BASE_URL" in python and ".part" not in python
    assert os.listdir(tmp_path) == []  # the folders it created are gone again
    assert cli.main(["download", "124M", "--model_dir", models, "--base_url", url]) == 2
    shell = capsys.readouterr().err.splitlines()[-1]
    assert f"gpt2_simple download 124M --model_dir {models}" in shell and "download_gpt2(" not in shell
    assert "--base_url or $GPT2_SIMPLE_BASE_URL" in shell and "Connection refused" in shell
    assert os.listdir(tmp_path) == []
    # A resumable .part is mentioned when there is one.
    os.makedirs(os.path.join(models, "124M"))
    with open(os.path.join(models, "124M", "checkpoint.part"), "wb") as f:
        f.write(b"12345")
    with pytest.raises(gpt2.DownloadError, match=r"to resume from .*checkpoint\.part \(5 bytes so far\)"):
        gpt2.download_gpt2(model_dir=models, model_name="124M", base_url=url)


# ---------------------------------------------------------------------------------------------
# Feedback and save sizes, on a real (tiny) run


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory, real_vocab_dir):
    root = tmp_path_factory.mktemp("first_hour")
    return root, make_tiny_model(root, real_vocab_dir), write_text(root)


def _finetune(world, capsys, run_name, steps, **kwargs):
    root, model_dir, data = world
    result = gpt2.finetune(gpt2.start_tf_sess(), data, model_name="tiny", model_dir=model_dir, steps=steps,
                           run_name=run_name, checkpoint_dir=str(root / "checkpoint"), sample_every=0,
                           accumulate_gradients=1, learning_rate=1e-3, seed=5, **kwargs)
    return result, capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_progress_says_what_is_happening_and_how_long_is_left(tiny_world, capsys):
    result, lines = _finetune(tiny_world, capsys, "feedback", 4)
    compiling = [i for i, line in enumerate(lines) if line.startswith("Compiling the training step")]
    progress = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert len(compiling) == 1 and compiling[0] < progress[0]
    assert [PROGRESS.match(lines[i]).group(1) for i in progress] == ["1", "2", "3", "4"]
    assert re.fullmatch(r"The first step took \d+\.\d s, tracing and compiling included", lines[progress[0] + 1])
    estimate = lines[progress[1] + 1]
    assert re.fullmatch(r"A step takes about \d+\.\d s: 2 of 4 steps left, about \d+ s", estimate), estimate
    size = [line for line in lines if line.startswith("  model-4: ")]
    assert len(size) == 1 and "of weights +" in size[0] and "of optimizer state; the run folder holds" in size[0]


def _bundle_bytes(run_dir, name):
    return sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir) if f.startswith(name + "."))


@pytest.mark.slow
def test_smaller_saves_and_what_each_resume_costs(tiny_world, capsys):
    """'bfloat16' halves the optimizer file and resumes almost exactly; 'none' is weights only."""
    straight, _ = _finetune(tiny_world, capsys, "straight", 6)
    straight_losses = [straight.losses[s] for s in (4, 5, 6)]
    resumed = {}
    for mode in ("full", "bfloat16", "none"):
        first, _ = _finetune(tiny_world, capsys, f"save_{mode}", 3, save_optimizer=mode)
        sizes = _bundle_bytes(first.run_dir, "model-3"), _bundle_bytes(first.run_dir, "optimizer-3")
        second, lines = _finetune(tiny_world, capsys, f"save_{mode}", 3, save_optimizer=mode)
        assert sorted(second.losses) == [4, 5, 6]
        resumed[mode] = ([second.losses[s] for s in (4, 5, 6)], sizes, lines)
    full, bf16, none = (resumed[m] for m in ("full", "bfloat16", "none"))
    assert full[0] == straight_losses  # exact
    assert bf16[1][1] < 0.6 * full[1][1] and none[1][1] < 0.05 * full[1][1] < full[1][0] * 2.1
    difference = max(abs(a - b) / b for a, b in zip(bf16[0], straight_losses))
    assert 0 < difference < 2e-3, difference  # rounded moments: close, not identical
    print(f"bfloat16 moments: largest relative loss difference after a resume {difference:.2e}")
    assert any("saved with save_optimizer='none'" in line for line in none[2])
    assert none[0][0] == straight_losses[0] and none[0][2] != straight_losses[2]  # same weights, fresh moments


def test_bad_save_mode_is_one_line_before_anything_loads(tiny_world):
    with pytest.raises(ValueError, match=r"^save_optimizer='half' is not supported; use one of "
                                         r"\['full', 'bfloat16', 'none'\]"):
        gpt2.finetune(gpt2.start_tf_sess(), "missing.txt", save_optimizer="half")


@pytest.mark.slow
def test_stdout_holds_only_the_texts(tiny_world, capsys, monkeypatch):
    root, model_dir, data = tiny_world
    monkeypatch.chdir(root)
    _finetune(tiny_world, capsys, "run1", 1)
    assert cli.main(["generate", "--stdout", "--length", "6", "--nsamples", "2", "--seed", "1",
                     "--checkpoint_dir", str(root / "checkpoint")]) == 0
    captured = capsys.readouterr()
    assert "Loading checkpoint" in captured.err and "Loading" not in captured.out
    texts = captured.out.split("=" * 20 + "\n")
    assert len(texts) == 3 and texts[-1] == ""


def test_drive_helpers_say_what_they_copy(tmp_path, capsys, monkeypatch):
    drive = tmp_path / "drive"
    drive.mkdir()
    monkeypatch.chdir(tmp_path)
    write_text(tmp_path, text="x" * 2_500_000, name="big.txt")
    gpt2.copy_file_to_gdrive("big.txt", drive_dir=str(drive))
    assert capsys.readouterr().out == f"Copied big.txt (2.5 MB) to {drive / 'big.txt'}\n"
    assert os.path.getsize(drive / "big.txt") == 2_500_000

"""The command line: flags named and defaulted as the Python functions, upstream-style calls, errors."""
import functools
import inspect
import os
import subprocess
import sys

import pytest

import gpt2_simple as gpt2
from gpt2_simple import cli
from runs import make_tiny_model, subprocess_env, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _defaults(function, skip):
    return {n: p.default for n, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in skip}


@pytest.mark.parametrize("command, function, extra", [
    ("finetune", gpt2.finetune, ["data.txt"]),
    ("generate", gpt2.generate, []),
    ("download", gpt2.download_gpt2, []),
    ("encode", gpt2.encode_dataset, ["data.txt"]),
])
def test_cli_defaults_equal_python_defaults(command, function, extra):
    args = cli.build_parser().parse_args([command] + extra)
    expected = _defaults(function, cli.SKIP)
    assert {k: getattr(args, k) for k in expected} == expected


def test_upstream_style_invocations(monkeypatch):
    calls = {}

    @functools.wraps(gpt2.finetune)  # keeps the signature the CLI reads its flags from
    def record(sess, dataset, **kw):
        calls["finetune"] = (dataset, kw)

    monkeypatch.setattr(gpt2, "finetune", record)
    monkeypatch.setattr(gpt2, "is_gpt2_downloaded", lambda *a: True)
    assert cli.main(["finetune", "mytext.txt", "--steps", "10", "--overwrite", "true", "--run_name", "r",
                     "--learning_rate", "1e-3", "--only_train_transformer_layers"]) == 0
    dataset, kw = calls["finetune"]
    assert dataset == "mytext.txt"
    assert (kw["steps"], kw["overwrite"], kw["run_name"], kw["learning_rate"]) == (10, True, "r", 1e-3)
    assert kw["only_train_transformer_layers"] is True and kw["multi_gpu"] is False
    assert cli.main(["finetune", "--dataset", "other.txt", "--overwrite", "False"]) == 0
    assert calls["finetune"][0] == "other.txt" and calls["finetune"][1]["overwrite"] is False
    args = cli.build_parser().parse_args(["generate", "--include_prefix", "False", "--nsamples", "4", "--batch_size",
                                          "2", "--top_p", "0.9", "--seed", "3", "--prefix", "Hi"])
    assert (args.include_prefix, args.nsamples, args.batch_size, args.top_p, args.seed, args.prefix) == \
        (False, 4, 2, 0.9, 3, "Hi")


def test_generate_writes_files_and_never_empties_the_folder(tmp_path, monkeypatch, real_vocab_dir, capsys):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "keep.txt").write_text("mine")
    assert cli.main(["generate", "--model_name", "tiny", "--model_dir", model_dir, "--nfiles", "3",
                     "--nsamples", "2", "--length", "5", "--seed", "1"]) == 0
    files = sorted(os.listdir(tmp_path / "gen"))
    assert "keep.txt" in files and (tmp_path / "gen" / "keep.txt").read_text() == "mine"
    written = [f for f in files if f.startswith("gpt2_gentext_")]
    assert len(written) == 3 and len(set(written)) == 3
    assert all((tmp_path / "gen" / f).read_text(encoding="utf-8").count("=" * 20 + "\n") == 2 for f in written)
    capsys.readouterr()
    assert cli.main(["generate", "--model_name", "tiny", "--model_dir", model_dir, "--stdout", "--length", "4"]) == 0
    assert capsys.readouterr().out.startswith("Loading pretrained model")


def test_finetune_then_generate_end_to_end(tmp_path, monkeypatch, real_vocab_dir, capsys):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    data = write_text(tmp_path)
    assert cli.main(["finetune", data, "--model_name", "tiny", "--model_dir", model_dir, "--steps", "2",
                     "--sample_every", "0", "--accumulate_gradients", "1"]) == 0
    assert "Saving checkpoint/run1/model-2" in capsys.readouterr().out
    assert cli.main(["generate", "--stdout", "--length", "5", "--seed", "0"]) == 0
    assert "Loading checkpoint checkpoint/run1/model-2" in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["finetune", "missing.txt", "--model_name", "mine", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2_simple: error: ") and err.count("\n") == 1
    assert cli.main(["download", "99M"]) == 2
    assert "'99M'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("script", ["finetune.py", "generate.py", "download_model.py", "encode_dataset.py"])
def test_scripts_run(script, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "usage: gpt2_simple" in proc.stdout and "--model_dir" in proc.stdout

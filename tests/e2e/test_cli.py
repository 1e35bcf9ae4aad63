"""The command line: flags named and defaulted as the Python functions, upstream-style calls, errors.

The library functions are replaced by recorders (keeping their signatures, which the parser
reads), so these tests parse and dispatch without building any model.
"""
import functools
import inspect
import os
import re
import subprocess
import sys

import pytest
from runs import ROOT

import gpt2_simple as gpt2
from gpt2_simple import cli

SESSION = object()


def _defaults(function, skip):
    return {n: p.default for n, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in skip}


# Each subcommand, the arguments it needs, and every function whose defaults its flags carry.
COMMANDS = [
    ("finetune", ["data.txt"], [("finetune", {"sess", "dataset", "reuse"})]),
    ("generate", [], [("load_gpt2", {"sess", "reuse"}),
                      ("generate", {"sess", "sample_dir", "return_as_list", "destination_path", "logit_bias"}),
                      ("generate_to_file", {"sess", "destination_path", "logit_bias"})]),
    ("download", [], [("download_gpt2", set())]),
    ("encode", ["data.txt"], [("encode_dataset", {"file_path"})]),
    ("evaluate", ["heldout.txt"], [("evaluate", {"sess", "dataset", "print_table"})]),
]


@pytest.mark.parametrize("command, needed, functions", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_cli_defaults_equal_python_defaults(command, needed, functions):
    args = vars(cli.build_parser().parse_args([command] + needed))
    for name, skip in functions:
        expected = _defaults(getattr(gpt2, name), skip)
        assert expected, name
        missing = sorted(set(expected) - set(args))
        assert not missing, f"{command}: no flag for {name}({', '.join(missing)})"
        assert {k: args[k] for k in expected} == expected, name
        for k, v in expected.items():
            assert type(args[k]) is type(v), (name, k)


def test_cli_defaults_follow_the_signature(monkeypatch):
    """Defaults are read from the function, not written twice: change the function, the CLI follows."""
    def finetune(sess, dataset, steps=7, overwrite=True, *, seed=3):
        pass

    monkeypatch.setattr(gpt2, "finetune", finetune)
    args = cli.build_parser().parse_args(["finetune", "x.txt"])
    assert (args.steps, args.overwrite, args.seed) == (7, True, 3)
    assert not hasattr(args, "learning_rate")


@pytest.fixture
def calls(monkeypatch):
    """Replace the library functions the CLI calls with recorders; returns the list of calls."""
    recorded = []

    def replace(name, result=None, effect=None):
        original = getattr(gpt2, name)

        @functools.wraps(original)  # keeps the signature the CLI reads its flags from
        def record(*args, **kwargs):
            recorded.append((name, args, kwargs))
            if effect:
                effect(*args, **kwargs)
            return result

        monkeypatch.setattr(gpt2, name, record)

    def write_file(sess, destination_path, **kwargs):
        with open(destination_path, "w", encoding="utf-8") as f:
            f.write(f"seed={kwargs['seed']}")

    replace("start_tf_sess", result=SESSION)
    for name in ("finetune", "load_gpt2", "generate", "download_gpt2", "encode_dataset"):
        replace(name)
    replace("generate_to_file", effect=write_file)
    replace("is_gpt2_downloaded", result=True)
    return recorded


def _only(calls, name):
    found = [(args, kwargs) for n, args, kwargs in calls if n == name]
    assert len(found) == 1, (name, calls)
    return found[0]


def test_finetune_upstream_style(calls):
    assert cli.main(["finetune", "mytext.txt", "--steps", "10", "--overwrite", "true", "--run_name", "r",
                     "--learning_rate", "1e-3", "--only_train_transformer_layers", "--optimizer", "sgd"]) == 0
    args, kw = _only(calls, "finetune")
    assert args == (SESSION, "mytext.txt")
    assert (kw["steps"], kw["overwrite"], kw["run_name"], kw["learning_rate"], kw["optimizer"]) == \
        (10, True, "r", 1e-3, "sgd")
    assert kw["only_train_transformer_layers"] is True and kw["multi_gpu"] is False
    assert "reuse" not in kw and "sess" not in kw


@pytest.mark.parametrize("argv, dataset, overwrite", [
    (["--dataset", "other.txt", "--overwrite", "False"], "other.txt", False),
    (["--overwrite", "data.txt"], "data.txt", True),  # a bare boolean flag does not swallow the dataset
    (["data.txt", "--overwrite"], "data.txt", True),
    (["--overwrite=TRUE", "--dataset=data.txt"], "data.txt", True),
])
def test_finetune_dataset_and_booleans(calls, argv, dataset, overwrite):
    assert cli.main(["finetune"] + argv) == 0
    args, kw = _only(calls, "finetune")
    assert args[1] == dataset and kw["overwrite"] is overwrite


def test_generate_upstream_style(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--include_prefix", "False", "--nsamples", "4", "--batch_size", "2",
                     "--top_p", "0.9", "--prefix", "Hi", "--truncate", "<|endoftext|>", "--run_name", "r",
                     "--checkpoint", "model-5"]) == 0
    _, load = _only(calls, "load_gpt2")
    assert (load["run_name"], load["checkpoint"], load["model_name"]) == ("r", "model-5", None)
    args, kw = _only(calls, "generate_to_file")
    assert args == (SESSION,)
    assert (kw["include_prefix"], kw["nsamples"], kw["batch_size"], kw["top_p"], kw["prefix"], kw["truncate"]) == \
        (False, 4, 2, 0.9, "Hi", "<|endoftext|>")
    assert kw["destination_path"].startswith(os.path.join("gen", "gpt2_gentext_"))


def test_generate_stdout_prints_and_writes_nothing(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--stdout", "--model_name", "124M", "--length", "20"]) == 0
    _, kw = _only(calls, "generate")
    assert kw["length"] == 20 and "destination_path" not in kw and "return_as_list" not in kw
    assert not os.listdir(tmp_path)


def test_generate_never_empties_the_folder_and_names_never_collide(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "utc_stamp", lambda: "20240101_000000")  # every file in the same second
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "keep.txt").write_text("mine")
    for _ in range(2):
        assert cli.main(["generate", "--nfiles", "3", "--seed", "5"]) == 0
    files = sorted(os.listdir(tmp_path / "gen"))
    assert (tmp_path / "gen" / "keep.txt").read_text() == "mine"
    written = [f for f in files if f != "keep.txt"]
    assert len(written) == 6 and all(re.fullmatch(r"gpt2_gentext_20240101_000000_\d(-1)?\.txt", f) for f in written)
    # the first command's files were not overwritten by the second: seeds 5, 6, 7 each twice
    seeds = sorted((tmp_path / "gen" / f).read_text() for f in written)
    assert seeds == ["seed=5", "seed=5", "seed=6", "seed=6", "seed=7", "seed=7"]


def test_generate_creates_a_nested_folder(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "--folder", os.path.join("out", "texts")]) == 0
    assert len(os.listdir(tmp_path / "out" / "texts")) == 1


@pytest.mark.parametrize("argv, downloads", [
    (["finetune", "d.txt"], True),
    (["finetune", "d.txt", "--model_name", "117M"], True),
    (["finetune", "d.txt", "--model_name", "my_model"], False),  # not a release: nothing to download
    (["finetune", "d.txt", "--restore_from", "checkpoint/other"], False),
])
def test_finetune_downloads_a_missing_released_model(calls, monkeypatch, tmp_path, argv, downloads):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.txt").write_text("text")  # the dataset is checked before a download
    monkeypatch.setattr(gpt2, "is_gpt2_downloaded", lambda *a, **k: False)
    assert cli.main(argv) == 0
    assert [n for n, _, _ in calls].count("download_gpt2") == int(downloads)


def test_finetune_resuming_a_run_does_not_download(calls, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpt2, "is_gpt2_downloaded", lambda *a, **k: False)
    (tmp_path / "checkpoint" / "run1").mkdir(parents=True)
    (tmp_path / "checkpoint" / "run1" / "checkpoint").write_text('model_checkpoint_path: "model-10"\n')
    (tmp_path / "d.txt").write_text("text")  # the dataset is checked before a download
    assert cli.main(["finetune", "d.txt"]) == 0
    assert "download_gpt2" not in [n for n, _, _ in calls]
    assert cli.main(["finetune", "d.txt", "--restore_from", "fresh"]) == 0
    assert "download_gpt2" in [n for n, _, _ in calls]


def test_download_and_encode(calls):
    assert cli.main(["download", "355M", "--model_dir", "m", "--base_url", "http://localhost:1"]) == 0
    assert cli.main(["download", "--model_name", "774M"]) == 0
    assert cli.main(["encode", "big.txt", "--out_path", "big.npz", "--combine", "10"]) == 0
    downloads = [kw for n, _, kw in calls if n == "download_gpt2"]
    assert downloads == [dict(model_name="355M", model_dir="m", base_url="http://localhost:1"),
                         dict(model_name="774M", model_dir="models", base_url=None)]
    args, kw = _only(calls, "encode_dataset")
    assert args == ("big.txt",) and kw == dict(model_dir="models", out_path="big.npz", model_name="124M", combine=10,
                                               line_by_line=False, text_field="text")


def test_library_errors_are_one_line_with_exit_code_2(calls, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ValueError("nsamples=3 must be a multiple of batch_size=2;\n  pass nsamples=4")

    monkeypatch.setattr(gpt2, "generate_to_file", functools.wraps(gpt2.generate_to_file)(fail))
    assert cli.main(["generate", "--nsamples", "4", "--batch_size", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("gpt2_simple: error: --nsamples 3 must be a multiple of --batch_size 2; "
                            "pass --nsamples 4\n")  # in shell terms
    assert "Traceback" not in captured.out + captured.err


def test_real_library_errors(tmp_path, monkeypatch, capsys):
    """The real functions (no model work): a missing dataset and an unknown model name."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["finetune", "missing.txt", "--model_name", "mine", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2_simple: error: ") and err.count("\n") == 1
    assert cli.main(["download", "99M"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2_simple: error: ") and "'99M'" in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["generate", "--help"], 0),
    ([], 2),
    (["finetune", "d.txt", "--steps", "ten"], 2),
    (["finetune", "d.txt", "--overwrite", "maybe"], 2),
    (["finetune", "d.txt", "--optimizer", "rmsprop"], 2),
    (["generate", "--nfiles", "0"], 2),
])
def test_usage_errors_return_codes(calls, argv, code, capsys):
    assert cli.main(argv) == code  # returned, not raised as SystemExit
    assert not [n for n, _, _ in calls if n != "start_tf_sess"]


def test_two_different_datasets_are_an_error(calls, capsys):
    assert cli.main(["finetune", "a.txt", "--dataset", "b.txt"]) == 2
    assert "two datasets" in capsys.readouterr().err



def test_finetune_without_a_dataset_runs_the_bundled_demo(calls, capsys):
    assert cli.main(["finetune", "--seed", "3"]) == 0
    args, kwargs = _only(calls, "finetune")
    assert args[1] == cli.SAMPLE_TEXT and os.path.getsize(cli.SAMPLE_TEXT) > 5000
    assert kwargs["steps"] == cli.DEMO_STEPS == 10
    assert _only(calls, "generate")[1] == dict(length=100, nsamples=1, seed=3)
    assert "No dataset given" in capsys.readouterr().out
    assert cli.main(["finetune", "--steps", "3"]) == 0
    assert [kw["steps"] for n, _, kw in calls if n == "finetune"] == [10, 3]


@pytest.mark.slow
def test_scripts_run(tmp_path):
    """Each script answers --help from outside the checkout (started together: each imports TF)."""
    scripts = {"finetune.py": "--sample_every", "generate.py": "--nfiles", "download_model.py": "--base_url",
               "encode_dataset.py": "--out_path"}
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
             if p and os.path.abspath(p) != ROOT]  # so the scripts must find the checkout themselves
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(parts))
    procs = {s: subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", s), "--help"], cwd=tmp_path,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in scripts}
    for script, flag in scripts.items():
        out, err = procs[script].communicate(timeout=120)
        assert procs[script].returncode == 0, err
        assert out.startswith("usage: gpt2_simple") and flag in out and "--model_dir" in out


@pytest.mark.slow
def test_finetune_then_generate_end_to_end(tmp_path, monkeypatch, real_vocab_dir, capsys):
    """The one test that runs the real library through the CLI, on a 2-layer, width-16 model."""
    from runs import make_tiny_model, write_text

    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    data = write_text(tmp_path)
    assert cli.main(["finetune", data, "--model_name", "tiny", "--model_dir", model_dir, "--steps", "2",
                     "--sample_every", "0", "--accumulate_gradients", "1", "--seed", "0"]) == 0
    assert "Saving checkpoint/run1/model-2" in capsys.readouterr().out
    assert cli.main(["generate", "--length", "5", "--nsamples", "2", "--seed", "0", "--nfiles", "2"]) == 0
    out = capsys.readouterr().out
    assert "Loading checkpoint checkpoint/run1/model-2" in out and out.count("Wrote gen") == 2
    for name in os.listdir(tmp_path / "gen"):
        assert (tmp_path / "gen" / name).read_text(encoding="utf-8").count("=" * 20 + "\n") == 2

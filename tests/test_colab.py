"""Colab helpers as plain copies to a 'drive' folder: round trips, and no tar escapes."""
import io
import os
import tarfile

import pytest

import gpt2_simple as gpt2


@pytest.fixture
def drive(tmp_path, monkeypatch):
    """A working directory with checkpoint/run1 (incl. a subfolder) and an empty drive folder."""
    work = tmp_path / "work"
    run = work / "checkpoint" / "run1"
    (run / "events").mkdir(parents=True)
    (run / "model-1.data-00000-of-00001").write_bytes(os.urandom(5000))
    (run / "model-1.index").write_bytes(os.urandom(100))
    (run / "checkpoint").write_text('model_checkpoint_path: "model-1"\n')
    (run / "events" / "events.out").write_bytes(b"\x00\x01")
    (tmp_path / "drive").mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GPT2_SIMPLE_DRIVE_DIR", str(tmp_path / "drive"))
    return tmp_path


def _files(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(folder) for f in fs}


@pytest.mark.parametrize("copy_folder", [False, True])
def test_round_trip(drive, copy_folder):
    before = _files("checkpoint")
    gpt2.copy_checkpoint_to_gdrive(copy_folder=copy_folder)
    stored = os.path.join("checkpoint", "run1") if copy_folder else "checkpoint_run1.tar"
    assert os.listdir(drive / "drive") == [stored.split(os.sep)[0]]  # no temporary file left behind
    os.rename("checkpoint", "moved")
    assert gpt2.copy_checkpoint_from_gdrive(copy_folder=copy_folder) == os.path.join("checkpoint", "run1")
    assert _files("checkpoint") == before
    assert _files("moved") == before


def test_tar_is_gpt2_simple_layout(drive):
    gpt2.copy_checkpoint_to_gdrive()
    with tarfile.open(drive / "drive" / "checkpoint_run1.tar") as tar:
        names = tar.getnames()
    assert "checkpoint/run1/model-1.index" in names and all(n.startswith("checkpoint/run1") for n in names)


@pytest.mark.parametrize("copy_folder", [False, True])
def test_custom_checkpoint_dir_and_drive_dir(drive, copy_folder, monkeypatch):
    monkeypatch.delenv("GPT2_SIMPLE_DRIVE_DIR")
    other = drive / "other_drive"
    other.mkdir()
    before = _files("checkpoint")
    gpt2.copy_checkpoint_to_gdrive("run1", copy_folder, checkpoint_dir=os.path.abspath("checkpoint"),
                                   drive_dir=str(other))
    target = drive / "restored" / "checkpoint"  # another place, found by the same last name
    gpt2.copy_checkpoint_from_gdrive("run1", copy_folder, checkpoint_dir=str(target), drive_dir=str(other))
    assert _files(target) == before


def test_upstream_tar_restores_into_any_checkpoint_dir(drive):
    """A tar made the way gpt-2-simple made it (tar.add('checkpoint/run1')) restores elsewhere."""
    with tarfile.open(drive / "drive" / "ckpts_run1.tar", "w") as tar:
        tar.add(os.path.join("checkpoint", "run1"))
    before = _files("checkpoint")
    gpt2.copy_checkpoint_from_gdrive(checkpoint_dir="ckpts")
    assert _files("ckpts") == before


def test_files_round_trip(drive):
    assert gpt2.get_tarfile_name(os.path.join("checkpoint", "run1")) == "checkpoint_run1.tar"
    os.makedirs("out")
    for name in ("notes.txt", os.path.join("out", "gen.txt")):
        with open(name, "wb") as f:
            f.write(b"hello \xe2\x9c\x93")
        gpt2.copy_file_to_gdrive(name)
        os.remove(name)
        gpt2.copy_file_from_gdrive(name)
        assert open(name, "rb").read() == b"hello \xe2\x9c\x93"
    assert sorted(os.listdir(drive / "drive")) == ["notes.txt", "out"]
    with pytest.raises(FileNotFoundError, match="not found on the drive"):
        gpt2.copy_file_from_gdrive("absent.txt")


def _evil_tar(path, name, kind=tarfile.REGTYPE):
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("checkpoint/run1/ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        else:
            info.size = 4
        tar.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name, kind, reason", [
    ("../escape.txt", tarfile.REGTYPE, "climbing out"),
    ("checkpoint/run1/../../../escape.txt", tarfile.REGTYPE, "climbing out"),
    ("/tmp/escape.txt", tarfile.REGTYPE, "absolute"),
    ("checkpoint/run1/link", tarfile.SYMTYPE, "only files and folders"),
    ("checkpoint/run2/model-1.index", tarfile.REGTYPE, "not inside"),
])
def test_unsafe_tar_members_are_refused_before_anything_is_written(drive, name, kind, reason):
    _evil_tar(drive / "drive" / "checkpoint_run1.tar", name, kind)
    os.rename("checkpoint", "moved")
    with pytest.raises(ValueError, match=reason):
        gpt2.copy_checkpoint_from_gdrive()
    assert not os.path.exists(os.path.join("checkpoint", "run1", "ok.txt"))
    assert not (drive / "escape.txt").exists()


def test_not_mounted_and_not_colab(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_SIMPLE_DRIVE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="mount_gdrive"):
        gpt2.is_mounted()
    with pytest.raises(FileNotFoundError, match="mount_gdrive"):
        gpt2.copy_checkpoint_to_gdrive()
    monkeypatch.setitem(__import__("sys").modules, "google.colab", None)  # as outside Colab
    with pytest.raises(RuntimeError, match="only inside Google Colab"):
        gpt2.mount_gdrive()


def test_missing_run_folder(drive):
    with pytest.raises(FileNotFoundError, match="run folder"):
        gpt2.copy_checkpoint_to_gdrive("nope")
    with pytest.raises(FileNotFoundError, match="not found on the drive"):
        gpt2.copy_checkpoint_from_gdrive("nope")
    with pytest.raises(ValueError, match="run_name"):
        gpt2.copy_checkpoint_to_gdrive("../checkpoint/run1")

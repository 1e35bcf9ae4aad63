"""Colab helpers as plain copies to a 'drive' folder: round trips, and no tar escapes."""
import io
import os
import tarfile

import pytest

import gpt2_simple as gpt2


@pytest.fixture
def drive(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "checkpoint" / "run1").mkdir(parents=True)
    (work / "checkpoint" / "run1" / "model-1.index").write_bytes(os.urandom(100))
    (work / "checkpoint" / "run1" / "counter").write_text("1\n")
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
    expected = "checkpoint/run1" if copy_folder else "checkpoint_run1.tar"
    assert os.path.exists(drive / "drive" / expected)
    os.rename("checkpoint", "moved")
    gpt2.copy_checkpoint_from_gdrive(copy_folder=copy_folder)
    assert _files("checkpoint") == before


def test_files_and_names(drive):
    assert gpt2.get_tarfile_name(os.path.join("checkpoint", "run1")) == "checkpoint_run1.tar"
    with open("notes.txt", "w") as f:
        f.write("hello")
    gpt2.copy_file_to_gdrive("notes.txt")
    os.remove("notes.txt")
    gpt2.copy_file_from_gdrive("notes.txt")
    assert open("notes.txt").read() == "hello"


def test_tar_member_outside_the_target_is_refused(drive):
    with tarfile.open(drive / "drive" / "checkpoint_run1.tar", "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ValueError, match="refusing tar member '../escape.txt'"):
        gpt2.copy_checkpoint_from_gdrive()
    assert not (drive / "escape.txt").exists()


def test_not_mounted_and_not_colab(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_SIMPLE_DRIVE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="call gpt2.mount_gdrive"):
        gpt2.copy_checkpoint_to_gdrive()
    with pytest.raises(RuntimeError, match="only inside Google Colab"):
        gpt2.mount_gdrive()

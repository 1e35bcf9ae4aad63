"""Google Colab helpers: mount Drive, copy run folders and files to and from it.

gpt-2-simple's names and arguments, plus keyword-only `checkpoint_dir` and `drive_dir`. Only
`mount_gdrive` needs Colab (imported inside it); everything else is a plain tar or folder copy
between the working directory and a "drive" folder: `drive_dir=`, else `$GPT2_SIMPLE_DRIVE_DIR`,
else `/content/drive/MyDrive`. So the helpers work with any synced folder, and in tests.

On the drive a run is stored as gpt-2-simple stored it: `checkpoint_run1.tar` holding
`checkpoint/run1/...` (or the folder `checkpoint/run1` with `copy_folder=True`), where
`checkpoint` is the last component of `checkpoint_dir`. Nothing here deletes user data: files
and tars are written under a temporary name and renamed, and extraction refuses any tar member
that is absolute, climbs out with `..`, is a link or device, or is not inside the run folder.
"""
import copy
import os
import re
import shutil
import tarfile

from .atomic import copy_file, open_atomic, size_text
from .model.names import check_name

COLAB_MOUNT_POINT = "/content/drive"
DEFAULT_DRIVE_DIR = "/content/drive/MyDrive"
DRIVE_DIR_ENV = "GPT2_SIMPLE_DRIVE_DIR"


def mount_gdrive():
    """Mount Google Drive at /content/drive (Colab only).

    Raises:
        RuntimeError: outside Google Colab.
    """
    try:
        from google.colab import drive
    except ImportError:
        raise RuntimeError(
            "mount_gdrive() works only inside Google Colab; elsewhere pass drive_dir= (or set "
            f"${DRIVE_DIR_ENV}) to the copy_* helpers to copy to and from any folder"
        ) from None
    drive.mount(COLAB_MOUNT_POINT)


def is_mounted(*, drive_dir=None):
    """Return True if the drive folder exists, else raise (gpt-2-simple asserted).

    Raises:
        FileNotFoundError: the drive folder does not exist (Drive not mounted).
    """
    folder = _drive_dir(drive_dir)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"drive folder {folder} not found; in Colab call gpt2.mount_gdrive() first, elsewhere "
            f"pass drive_dir= or set ${DRIVE_DIR_ENV} to an existing folder"
        )
    return True


def get_tarfile_name(checkpoint_folder):
    """The tar name of a run folder: `checkpoint/run1` -> `checkpoint_run1.tar`."""
    return checkpoint_folder.replace(os.sep, "_") + ".tar"


def copy_checkpoint_to_gdrive(run_name="run1", copy_folder=False, *, checkpoint_dir="checkpoint", drive_dir=None):
    """Copy the run folder `checkpoint_dir/run_name` to the drive.

    Args:
        run_name: the run to copy.
        copy_folder: copy the folder tree instead of one tar (slower to sync, but browsable).
        checkpoint_dir: the parent of the run folder here.
        drive_dir: the drive folder (default `$GPT2_SIMPLE_DRIVE_DIR` or /content/drive/MyDrive).

    Returns:
        The tar file or folder written on the drive.

    Raises:
        FileNotFoundError: the drive folder or the run folder does not exist.
    """
    drive = _drive_dir(drive_dir)
    is_mounted(drive_dir=drive)
    folder = os.path.join(checkpoint_dir, check_name("run_name", run_name))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"run folder {folder} not found; fine-tune first or check run_name / checkpoint_dir")
    stored = _stored_name(checkpoint_dir, run_name)  # checkpoint/run1
    if copy_folder:
        target = os.path.join(drive, stored)
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return _report(folder, target)
    target = os.path.join(drive, get_tarfile_name(stored))
    with open_atomic(target, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        tar.add(folder, arcname=stored.replace(os.sep, "/"))
    return _report(folder, target)


def copy_checkpoint_from_gdrive(run_name="run1", copy_folder=False, *, checkpoint_dir="checkpoint", drive_dir=None):
    """Bring a run copied by `copy_checkpoint_to_gdrive` back into `checkpoint_dir/run_name`.

    Files of the same name in the local run folder are replaced; other files are kept.

    Returns:
        The local run folder.

    Raises:
        FileNotFoundError: the drive folder, or the run's tar or folder on it, does not exist.
        ValueError: the tar holds a member outside `<checkpoint>/<run_name>/`, a link or a device.
    """
    drive = _drive_dir(drive_dir)
    is_mounted(drive_dir=drive)
    folder = os.path.join(checkpoint_dir, check_name("run_name", run_name))
    stored = _stored_name(checkpoint_dir, run_name)
    source = os.path.join(drive, stored if copy_folder else get_tarfile_name(stored))
    if not (os.path.isdir(source) if copy_folder else os.path.isfile(source)):
        raise FileNotFoundError(f"{source} not found on the drive; copy it there with copy_checkpoint_to_gdrive"
                                f"(run_name={run_name!r}, copy_folder={copy_folder})")
    if copy_folder:
        shutil.copytree(source, folder, dirs_exist_ok=True)
        return _report(source, folder)
    os.makedirs(checkpoint_dir, exist_ok=True)
    with tarfile.open(source, "r") as tar:
        _extract_run(tar, run_name, checkpoint_dir)
    return _report(source, folder)


def copy_file_to_gdrive(file_path, *, drive_dir=None):
    """Copy a file to the same relative path on the drive (an absolute path: to its name there).

    Returns:
        The path written on the drive.
    """
    drive = _drive_dir(drive_dir)
    is_mounted(drive_dir=drive)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"{file_path} is not a file; give a path relative to {os.getcwd()}")
    target = os.path.join(drive, _relative_on_drive(file_path))
    _copy_atomically(file_path, target)
    return _report(file_path, target)


def copy_file_from_gdrive(file_path, *, drive_dir=None):
    """Copy a file from the drive (where `copy_file_to_gdrive(file_path)` put it) to `file_path`.

    Returns:
        `file_path`.
    """
    drive = _drive_dir(drive_dir)
    is_mounted(drive_dir=drive)
    source = os.path.join(drive, _relative_on_drive(file_path))
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source} not found on the drive; copy it there with copy_file_to_gdrive")
    _copy_atomically(source, file_path)
    return _report(source, file_path)


# ---------------------------------------------------------------------------------------------
# Paths, copies and safe extraction


def _report(source, target):
    """Print what was copied and how big it is (Drive quotas fill up); returns `target`."""
    print(f"Copied {source} ({_size(source)}) to {target}")
    return target


def _size(path):
    """'1.49 GB in 9 files' for a folder, '12.3 MB' for a file."""
    if os.path.isfile(path):
        return size_text(os.path.getsize(path))
    sizes = [os.path.getsize(os.path.join(folder, f)) for folder, _, files in os.walk(path) for f in files]
    return f"{size_text(sum(sizes))} in {len(sizes)} files"


def _drive_dir(drive_dir=None):
    return drive_dir or os.environ.get(DRIVE_DIR_ENV) or DEFAULT_DRIVE_DIR


def _stored_name(checkpoint_dir, run_name):
    """`<last component of checkpoint_dir>/<run_name>`: `checkpoint/run1` for the default."""
    parent = os.path.basename(os.path.abspath(checkpoint_dir)) or "checkpoint"
    return os.path.join(parent, run_name)


def _relative_on_drive(file_path):
    """A relative path stays as it is on the drive; one that is absolute or climbs out keeps its name."""
    path = os.path.normpath(file_path)
    if os.path.isabs(path) or path == ".." or path.startswith(".." + os.sep):
        return os.path.basename(path)
    return path


def _copy_atomically(source, target):
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    copy_file(source, target)


def _extract_run(tar, run_name, checkpoint_dir):
    """Extract `<any>/<run_name>/...` members into `checkpoint_dir/<run_name>/...`.

    Every member is checked before anything is written, so a bad tar writes nothing.
    """
    members = []
    for member in tar.getmembers():
        name = member.name.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ValueError(f"refusing tar member {member.name!r}: absolute or climbing out with '..'")
        if not (member.isfile() or member.isdir()):
            raise ValueError(f"refusing tar member {member.name!r}: only files and folders belong in a run")
        if len(parts) == 1 and member.isdir():
            continue  # an entry for the parent folder itself
        if len(parts) < 2 or parts[1] != run_name:
            raise ValueError(f"refusing tar member {member.name!r}: not inside '<checkpoint>/{run_name}/'; "
                             "is this the tar of another run?")
        renamed = copy.copy(member)
        renamed.name = "/".join(parts[1:])
        members.append(renamed)
    if hasattr(tarfile, "data_filter"):  # Python 3.12, and 3.8.17+ / 3.9.17+ / 3.10.12+ / 3.11.4+
        tar.extractall(checkpoint_dir, members=members, filter="data")
    else:
        tar.extractall(checkpoint_dir, members=members)

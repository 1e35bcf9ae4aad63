"""Google Colab helpers: mount Drive, copy run folders and files to and from it.

gpt-2-simple's names and arguments. Colab is imported only inside `mount_gdrive`; everything
else is a plain tar or folder copy between the working directory and a "drive" folder
(`/content/drive/MyDrive` by default, or `$GPT2_SIMPLE_DRIVE_DIR`, or `drive_dir=`), so it works
with any synced folder and in tests. Nothing here deletes user data: tars are written under a
temporary name and renamed, and extraction refuses members that would land outside the target.
"""
import os
import shutil
import tarfile

DEFAULT_DRIVE_DIR = "/content/drive/MyDrive"
DRIVE_DIR_ENV = "GPT2_SIMPLE_DRIVE_DIR"


def mount_gdrive():
    """Mount Google Drive at /content/drive (Colab only)."""
    try:
        from google.colab import drive
    except ImportError:
        raise RuntimeError(
            "mount_gdrive() works only inside Google Colab; elsewhere pass drive_dir= (or set "
            f"${DRIVE_DIR_ENV}) to the copy_* helpers to use any folder"
        ) from None
    drive.mount("/content/drive")


def _drive(drive_dir=None):
    return drive_dir or os.environ.get(DRIVE_DIR_ENV) or DEFAULT_DRIVE_DIR


def is_mounted(*, drive_dir=None):
    """Raise unless the drive folder exists (gpt-2-simple asserted instead)."""
    folder = _drive(drive_dir)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"drive folder {folder} not found; call gpt2.mount_gdrive() first in Colab, "
                                f"or pass drive_dir= / set ${DRIVE_DIR_ENV}")
    return True


def get_tarfile_name(checkpoint_folder):
    """`checkpoint/run1` -> `checkpoint_run1.tar`."""
    return checkpoint_folder.replace(os.sep, "_") + ".tar"


def copy_checkpoint_to_gdrive(run_name="run1", copy_folder=False, *, checkpoint_dir="checkpoint", drive_dir=None):
    """Copy `checkpoint_dir/run_name` to the drive, as one tar (default) or as a folder tree."""
    is_mounted(drive_dir=drive_dir)
    folder = os.path.join(checkpoint_dir, run_name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"run folder {folder} not found; fine-tune first or check run_name / checkpoint_dir")
    if copy_folder:
        shutil.copytree(folder, os.path.join(_drive(drive_dir), folder), dirs_exist_ok=True)
        return
    name = get_tarfile_name(folder)
    target = os.path.join(_drive(drive_dir), name)
    tmp = target + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        tar.add(folder)
    os.replace(tmp, target)


def copy_checkpoint_from_gdrive(run_name="run1", copy_folder=False, *, checkpoint_dir="checkpoint", drive_dir=None):
    """Bring `checkpoint_dir/run_name` back from the drive (a tar or a folder tree)."""
    is_mounted(drive_dir=drive_dir)
    folder = os.path.join(checkpoint_dir, run_name)
    if copy_folder:
        source = os.path.join(_drive(drive_dir), folder)
        if not os.path.isdir(source):
            raise FileNotFoundError(f"{source} not found on the drive; copy it there with copy_checkpoint_to_gdrive")
        shutil.copytree(source, folder, dirs_exist_ok=True)
        return
    source = os.path.join(_drive(drive_dir), get_tarfile_name(folder))
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source} not found on the drive; copy it there with copy_checkpoint_to_gdrive")
    with tarfile.open(source, "r") as tar:
        _safe_extract(tar, ".")


def copy_file_to_gdrive(file_path, *, drive_dir=None):
    """Copy a file (relative to the working directory) to the same relative path on the drive."""
    is_mounted(drive_dir=drive_dir)
    target = os.path.join(_drive(drive_dir), file_path)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    shutil.copyfile(file_path, target)


def copy_file_from_gdrive(file_path, *, drive_dir=None):
    """Copy a file from the drive to the same relative path here."""
    is_mounted(drive_dir=drive_dir)
    os.makedirs(os.path.dirname(file_path) or ".", exist_ok=True)
    shutil.copyfile(os.path.join(_drive(drive_dir), file_path), file_path)


def _safe_extract(tar, target):
    root = os.path.realpath(target)
    for member in tar.getmembers():
        path = os.path.realpath(os.path.join(root, member.name))
        if os.path.commonpath([root, path]) != root or member.issym() or member.islnk():
            raise ValueError(f"refusing tar member {member.name!r}: it would be written outside {root} or is a link")
    tar.extractall(target, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(target)

"""Atomic file writes: a file is either its old self or completely new, never half-written.

This module owns the one way the library replaces files: write a temporary name in the same
folder (`.tmp-...`, which `formats.checkpoint.remove_temporaries` clears after a crash), fsync
it, then `os.replace` it over the target. `staged_path` is that for writers that take a file
name (TF bundles, GGUF, the token cache); `open_atomic` is the same as a context manager for
writers that need a file object (`np.savez_compressed`, safetensors, samples); `write_text` is
for short text files (the checkpoint state file, `counter`, `hparams.json`); `copy_file` copies
one file in; `staged_folder` replaces a whole folder (exports); `size_text` is how saves and
copies report the bytes they wrote. It does not know what it writes, and it imports nothing
from `gpt2_simple`, so every module can use it without an import cycle.
"""
import contextlib
import os
import secrets
import shutil


@contextlib.contextmanager
def staged_path(path, suffixes=("",)):
    """A temporary name beside `path` for a writer that takes a file name; renamed to `path` on success.

    Args:
        path: the file to replace, or with `suffixes` the prefix of the files to replace.
        suffixes: the files the writer makes from the name it is given; each `tmp + suffix`
            becomes `path + suffix`, in this order (a TF bundle's data file, then its index, so
            the bundle is seen only once it is complete).

    Yields:
        The temporary name. When the block ends normally each file is fsynced and renamed;
        whatever the block left under the temporary name is removed either way.
    """
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{name}")
    try:
        yield tmp
        for suffix in suffixes:
            with open(tmp + suffix, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp + suffix, path + suffix)
    finally:
        for suffix in suffixes:
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)


@contextlib.contextmanager
def open_atomic(path, mode, **kwargs):
    """Write to a temporary file beside `path`; rename it to `path` only when writing succeeds.

    Args:
        path: the file to replace.
        mode, kwargs: as for `open` (a writing mode: `"w"`, `"wb"`).

    Yields:
        The open temporary file. It is fsynced and renamed to `path` when the block ends
        normally, and removed when the block raises.
    """
    with staged_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_text(path, text):
    """Replace the small text file `path` atomically and durably (temporary name, fsync, rename)."""
    with open_atomic(path, "w", encoding="utf-8") as f:
        f.write(text)


def copy_file(source, target):
    """Copy the file `source` to `target` atomically: `target` is its old self or a whole copy."""
    with staged_path(target) as tmp:
        shutil.copyfile(source, tmp)


@contextlib.contextmanager
def staged_folder(target):
    """Fill a new hidden folder beside `target`; it becomes `target` only when the block succeeds.

    An existing `target` (the caller has checked it may go) is swapped out and removed only
    after the new folder is in place, and put back if the swap fails; when the block raises,
    the staging folder is removed and `target` is untouched. The folder is made with `mkdir`,
    not `mkdtemp`, so it gets the umask's permissions (a server running as another user can
    read an export).

    Yields:
        The path of the staging folder, on the same filesystem as `target`.
    """
    parent, base = os.path.split(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{base}.tmp-{secrets.token_hex(6)}")
    os.mkdir(staging)
    try:
        yield staging
        _replace_folder(staging, os.path.join(parent, base))
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(staging, target):
    if os.path.isdir(target) and not os.listdir(target):
        os.rmdir(target)
    if not os.path.exists(target):
        os.rename(staging, target)
        return
    old = staging + ".old"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)  # put the earlier folder back as it was
        raise
    shutil.rmtree(old)


def size_text(n):
    """A byte count as the saves and copies report it: '1.49 GB', '497.8 MB'."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"

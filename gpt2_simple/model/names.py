"""Where things live: model folders, run folders and sample folders, from user-given names.

This module owns turning `model_name`, `run_name` and their parent folders into paths, and
refusing names that would escape those parents (a path separator, '..', an empty name), so no
call ever writes outside `model_dir/<model_name>`, `checkpoint_dir/<run_name>` or
`sample_dir/<run_name>`. Which model names can be downloaded is `download.py`'s business:
here any folder name is a model (a custom or converted model in the OpenAI layout).
"""
import os


def check_name(argument, value):
    """Return `value` if it is a plain folder name, else raise a one-line ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{argument}={value!r} must be a non-empty folder name such as 'run1'")
    if value in (".", "..") or "/" in value or "\\" in value or (os.altsep and os.altsep in value) or "\0" in value:
        raise ValueError(
            f"{argument}={value!r} must be a plain folder name without path separators or '..'; "
            f"use the {'checkpoint_dir' if argument == 'run_name' else 'model_dir'} argument to choose the parent folder"
        )
    return value


def run_folder(checkpoint_dir, run_name):
    """`checkpoint_dir/run_name`, the run folder of `finetune` and `load_gpt2`."""
    return os.path.join(checkpoint_dir, check_name("run_name", run_name))


def model_folder(model_dir, model_name):
    """`model_dir/model_name`, a pretrained model in the OpenAI layout."""
    return os.path.join(model_dir, check_name("model_name", model_name))


def sample_folder(sample_dir, run_name):
    """`sample_dir/run_name`, where `finetune` writes its training samples."""
    return os.path.join(sample_dir, check_name("run_name", run_name))

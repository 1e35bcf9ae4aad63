"""gpt2_simple: fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2.

    import gpt2_simple as gpt2
    gpt2.download_gpt2(model_name="124M")
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, "mytext.txt", steps=1000)
    gpt2.generate(sess)

Importing the package configures nothing: no eager-mode switch, no device or thread settings.
"""
from .colab import (
    copy_checkpoint_from_gdrive,
    copy_checkpoint_to_gdrive,
    copy_file_from_gdrive,
    copy_file_to_gdrive,
    get_tarfile_name,
    is_mounted,
    mount_gdrive,
)
from .formats.download import DownloadError, download_gpt2, is_gpt2_downloaded
from .formats.folders import export_hf, load_model
from .formats.gguf import export_gguf
from .formats.hf import load_hf_model
from .generation.generate import generate, generate_to_file, load_gpt2
from .generation.saved_model import export_saved_model
from .model.hparams import HParams, load_hparams
from .model.model import GPT2
from .session import Session, reset_session, start_tf_sess
from .training.encoding import encode_csv, encode_dataset
from .training.scratch import create_model
from .training.train import finetune

__all__ = [
    "DownloadError",
    "GPT2",
    "HParams",
    "Session",
    "copy_checkpoint_from_gdrive",
    "copy_checkpoint_to_gdrive",
    "copy_file_from_gdrive",
    "copy_file_to_gdrive",
    "create_model",
    "download_gpt2",
    "encode_csv",
    "encode_dataset",
    "export_gguf",
    "export_hf",
    "export_saved_model",
    "finetune",
    "generate",
    "generate_to_file",
    "get_tarfile_name",
    "is_gpt2_downloaded",
    "is_mounted",
    "load_gpt2",
    "load_hf_model",
    "load_hparams",
    "load_model",
    "mount_gdrive",
    "reset_session",
    "start_tf_sess",
]

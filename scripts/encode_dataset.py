"""Encode a dataset once: python scripts/encode_dataset.py mytext.txt --out_path mytext.npz

Pass the .npz to finetune as its dataset to skip encoding on every run.
A thin wrapper around `gpt2_simple encode`: every flag is named as the Python argument;
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
    sys.exit(main(["encode"] + sys.argv[1:]))

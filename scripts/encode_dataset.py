"""Pre-encode a dataset: python scripts/encode_dataset.py mytext.txt --out_path mytext.npz

A thin wrapper around `gpt2_simple encode`; every flag is named as the Python argument
(`python scripts/encode_dataset.py --help` lists them with their defaults).
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import gpt2_simple.cli as cli
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import gpt2_simple.cli as cli

if __name__ == "__main__":
    sys.exit(cli.main(["encode"] + sys.argv[1:]))

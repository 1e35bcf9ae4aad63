"""Fine-tune GPT-2 on your text: python scripts/finetune.py --dataset mytext.txt --model_name 124M --steps 1000

Downloads the model first if it is a released one (124M, 355M, 774M, 1558M) and not yet in
--model_dir.
A thin wrapper around `gpt2_simple finetune`: every flag is named as the Python argument;
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
    sys.exit(main(["finetune"] + sys.argv[1:]))

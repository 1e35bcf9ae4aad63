"""Shared fixtures: quiet TensorFlow, the real GPT-2 vocabulary files, tiny hyper-parameters."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

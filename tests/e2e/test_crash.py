"""Crash safety: SIGKILL a fine-tuning process at random moments, mid-save included.

Every time, the run folder must load and `restore_from='latest'` must continue; with a seed,
the losses after the last saved step equal those of an uninterrupted run.
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from runs import make_tiny_model, subprocess_env, write_text

import gpt2_simple as gpt2

pytestmark = pytest.mark.slow  # all of this file: `pytest -m "not slow"` skips it

KILLS = 4
OPTIONS = dict(model_name="tiny", batch_size=1, accumulate_gradients=1, sample_every=0, save_every=1,
               learning_rate=3e-3)


def test_sigkill_at_random_moments_never_breaks_the_run(tmp_path, monkeypatch, real_vocab_dir):
    monkeypatch.chdir(tmp_path)
    model_dir = make_tiny_model(tmp_path, real_vocab_dir)
    data = write_text(tmp_path)
    run = tmp_path / "checkpoint" / "run1"
    script = textwrap.dedent(f"""
        import gpt2_simple as gpt2
        gpt2.finetune(gpt2.start_tf_sess(), {data!r}, steps=100000, model_dir={model_dir!r}, seed=7, **{OPTIONS!r})
    """)
    delays = random.Random(0)
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                                env=subprocess_env(PYTHONUNBUFFERED="1"))
        for line in proc.stdout:
            if line.startswith("["):  # training has started: kill at a random moment from here
                time.sleep(delays.uniform(0.0, 1.5))
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        if (run / "checkpoint").exists():
            gpt2.load_model(str(run))  # whatever the moment, the latest checkpoint loads
    saved = int(os.path.basename(gpt2.load_model(str(run)).checkpoint_path).split("-")[1])
    assert saved >= 1
    target = saved + 3
    resumed = gpt2.finetune(gpt2.start_tf_sess(), data, steps=3, model_dir=model_dir, **OPTIONS)
    assert sorted(resumed.losses) == list(range(saved + 1, target + 1))
    assert not [f for f in os.listdir(run) if f.startswith(".tmp-") or f.endswith(".tmp")]
    whole = gpt2.finetune(gpt2.start_tf_sess(), data, steps=target, model_dir=model_dir, run_name="whole", seed=7,
                          **OPTIONS)
    np.testing.assert_allclose([resumed.losses[s] for s in sorted(resumed.losses)],
                               [whole.losses[s] for s in sorted(resumed.losses)], rtol=1e-6)

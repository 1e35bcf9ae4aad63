"""Multi-worker runs under preemption, with real worker processes on 127.0.0.1 (`finetune --workers`).

A SIGTERM to any one worker makes every worker save the same step and exit 0; restarted, they end
with the weights of an uninterrupted run. A worker killed outright ends the other with one line
naming it, instead of a hang. Bounded: 16 steps of the tiny model, and a watchdog on each process.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from runs import free_ports, make_tiny_model, subprocess_env, write_text

import gpt2_simple as gpt2

STEPS = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory, real_vocab_dir):
    root = tmp_path_factory.mktemp("preemption")
    make_tiny_model(root, real_vocab_dir)
    write_text(root)
    return root


def _start(root, run, steps, ports):
    """Two `gpt2_simple finetune --workers ...` processes writing (worker 0) checkpoint/<run>."""
    workers = ",".join(f"127.0.0.1:{p}" for p in ports)
    env = {k: v for k, v in subprocess_env().items() if k != "TF_CONFIG"}
    return [subprocess.Popen(
        [sys.executable, "-m", "gpt2_simple.cli", "finetune", "data.txt", "--model_name", "tiny", "--model_dir",
         "models", "--run_name", run, "--steps", str(steps), "--batch_size", "2", "--accumulate_gradients", "1",
         "--sample_every", "0", "--save_every", "0", "--print_every", "1", "--seed", "5", "--learning_rate", "1e-3",
         "--workers", workers, "--worker_index", str(i)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _until_step(proc, step, deadline):
    """Read `proc`'s output until it prints step `step` (or ends); the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"[{step} |") or time.time() > deadline:
            break
    return lines


def _finish(procs, limit):
    """(return codes, stderr texts) of `procs`, each killed if it outlives `limit` seconds."""
    codes, errors = [], []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        codes.append(proc.returncode)
        errors.append(err)
    return codes, errors


def _weights(root, run):
    model = gpt2.load_model(os.path.join(root, "checkpoint", run))
    return {name: value.numpy() for name, value in model.weights.items()}


def _saved_steps(root, run):
    return sorted(int(m.group(1)) for name in os.listdir(os.path.join(root, "checkpoint", run))
                  if (m := re.fullmatch(r"model-(\d+)\.index", name)))


@pytest.mark.slow
def test_a_sigterm_to_any_worker_saves_every_worker_at_one_step_and_the_restart_is_exact(root):
    codes, errors = _finish(_start(root, "whole", STEPS, free_ports(2)), 300)
    assert codes == [0, 0], errors
    whole = _weights(root, "whole")
    for signalled in (1, 0):  # the non-chief, then the chief
        run = f"stopped_by_{signalled}"
        procs = _start(root, run, STEPS, free_ports(2))
        _until_step(procs[0], 4, time.time() + 240)
        procs[signalled].send_signal(signal.SIGTERM)
        start = time.time()
        codes, errors = _finish(procs, 90)
        assert codes == [0, 0] and time.time() - start < 90, errors
        saved = _saved_steps(root, run)
        assert len(saved) == 1 and 4 <= saved[0] < STEPS, saved  # one save, of the step both stopped at
        codes, errors = _finish(_start(root, run, STEPS - saved[0], free_ports(2)), 300)  # restore_from="latest"
        assert codes == [0, 0], errors
        assert _saved_steps(root, run)[-1] == STEPS
        resumed = _weights(root, run)
        for name, value in whole.items():
            np.testing.assert_array_equal(resumed[name], value, err_msg=f"{name}, SIGTERM to worker {signalled}")


@pytest.mark.slow
def test_a_worker_killed_outright_ends_the_other_with_one_line_naming_it(root):
    ports = free_ports(2)
    procs = _start(root, "killed", 100000, ports)
    _until_step(procs[0], 4, time.time() + 240)
    procs[1].kill()
    start = time.time()
    codes, errors = _finish(procs[:1], 120)
    assert codes[0] not in (0, None) and time.time() - start < 120, errors
    last = errors[0].strip().splitlines()[-1]
    assert last.startswith("gpt2_simple: error: worker 1 (127.0.0.1:") and f":{ports[1]})" in last, errors[0][-2000:]
    procs[1].wait()

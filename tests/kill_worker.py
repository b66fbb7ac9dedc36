"""Run a grasp-lora command and SIGKILL this process at the N-th loss forward (usage: kill_worker.py N ARGS...).

A training micro-batch, a val or a micro-dev batch: the kill lands mid-step or mid-probe, like a real crash."""

import os
import signal
import sys

import grasp_lora.train as train
from grasp_lora.cli import main

kill_at = int(sys.argv[1])
calls = [0]
real_example_nll = train.example_nll


def example_nll(model, batch):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_example_nll(model, batch)


train.example_nll = example_nll
sys.exit(main(sys.argv[2:]))

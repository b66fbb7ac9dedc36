"""Run a grasp-lora command and SIGKILL this process at the N-th micro-batch (usage: kill_worker.py N ARGS...).

The kill lands inside an optimizer step, after some micro-batches' backward passes, like a real crash."""

import os
import signal
import sys

import grasp_lora.train as train
from grasp_lora.cli import main

kill_at = int(sys.argv[1])
calls = [0]
real_batch_loss = train.batch_loss


def batch_loss(model, batch):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_batch_loss(model, batch)


train.batch_loss = batch_loss
sys.exit(main(sys.argv[2:]))

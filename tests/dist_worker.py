"""Run by torchrun in test_distributed.py: a controller run, then each rank saves its masks and weights."""

import sys
from pathlib import Path

import torch

from grasp_lora import distributed, prune
from grasp_lora.config import SearchConfig
from grasp_lora.controller_run import search

model, en, ar, data, out = sys.argv[1:6]
cfg = SearchConfig(model=model, adapters=[en, ar], data=data, lang="ar", out=out, max_steps=4, grad_accum=4,
                   round_every=2, lr=1e-3, device="cpu", controller="sliced")
_, trained = search(cfg)
state = {f"mask:{n}": l.mask(s) for n, l, s in prune.tensors(trained)}
state.update({f"weight:{n}": l.param(s).detach() for n, l, s in prune.tensors(trained)})
torch.save(state, Path(out) / f"rank{distributed.rank()}.pt")

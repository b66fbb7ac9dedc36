"""More than one process (torchrun): data-parallel gradients, decisions on rank 0, broadcast to all.

Under `torchrun --nproc_per_node N`, each rank takes its share of every optimizer step's micro-batches,
gradients are summed across ranks (so the step equals the single-process one), and only rank 0 runs the
controller, writes files and shows progress. gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun; a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    if not active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj):
    """rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Overwrite every rank's tensors (in place) with rank 0's, in key order."""
    if not active():
        return
    for key in sorted(tensors):
        t = tensors[key]
        buf = t.to(torch.uint8) if t.dtype == torch.bool else t
        dist.broadcast(buf, src=0)
        if buf is not t:
            t.copy_(buf.bool())

"""Encoded examples -> padded tensors: the one collation that training, evaluation and the criteria use."""

from __future__ import annotations

from typing import Iterator

import torch


def collate(examples: list[dict], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors (labels -100 on padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    if device.type == "cuda":  # pinned host memory: the copy overlaps the previous step's compute
        return {k: t.pin_memory().to(device, non_blocking=True)
                for k, t in (("input_ids", ids), ("labels", labels), ("attention_mask", mask))}
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def batches(examples: list[dict], pad_id: int, device: torch.device, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """`examples` in order, `batch_size` at a time, collated onto `device`."""
    for s in range(0, len(examples), batch_size):
        yield collate(examples[s:s + batch_size], pad_id, device)

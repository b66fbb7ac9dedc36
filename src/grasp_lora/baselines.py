"""The paper's training-free merge baselines (SPEC §1.10), each exported as one standard PEFT adapter.

- TIES: PEFT's `add_weighted_adapter(..., combination_type="ties")` over the source and target adapters.
- LoRAHub: per-adapter weights w in [-bound, bound] found by nevergrad NGOpt (40 evaluations) on the loss
  of a few target train examples + l1 * mean|w|; the composed adapter is A = sum_i w_i A_i, B = sum_i w_i B_i.
(Zero-shot, target-only LoRA and Adaptive LoRA Merge are `generate`, `train-adapter` and
`finetune-merged --prune-ratio 0`.)
"""

from __future__ import annotations

import logging
import warnings


import numpy as np
import torch

from .adapter_io import check_compatible, load_adapter, put_on, write_peft_adapter
from .config import LoraHubConfig, TiesConfig, save_config
from .errors import OptionError
from .files import output_dir, staged_run, write_json
from .inputs import load_inputs
from .model_card import write_model_card
from .models import base_model_id, load_model, resolve
from .train import LossProbe

PEFT_PREFIX = "base_model.model."
log = logging.getLogger(__name__)


def _check_adapters(cfg, form: str = "sum"):
    adapters = [load_adapter(p) for p in cfg.adapters]
    check_compatible(adapters, form, cfg.model, cfg.allow_other_base)
    return adapters


def ties_merge(cfg: TiesConfig) -> dict:
    """TIES-merge the adapters with PEFT and export the result as one adapter in OUT."""
    from peft import PeftModel

    adapters = _check_adapters(cfg)
    weights = cfg.weights or [1.0] * len(adapters)
    resolve(cfg.model)
    model = PeftModel.from_pretrained(load_model(cfg.model, cfg.device, cfg.dtype), cfg.adapters[0], adapter_name="a0")
    for i, path in enumerate(cfg.adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(adapters))]
    model.add_weighted_adapter(names, weights, "ties", combination_type="ties", density=cfg.density)
    factors = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "ties" in module.lora_A:
            B = module.lora_B["ties"].weight * module.scaling["ties"]  # fold the scale: export with scale 1
            factors[name.removeprefix(PEFT_PREFIX)] = (B, module.lora_A["ties"].weight)
    rank = next(iter(factors.values()))[1].shape[0]
    with staged_run(output_dir(cfg.out), resume=False) as work:
        write_peft_adapter(work, factors, rank, adapters[0].dropout, base_model_id(cfg.model))
        write_model_card(work, base_model_id(cfg.model), None, [], "TIES merge (grasp-lora ties)", {
            "Merged adapters": ", ".join(f"`{a}`" for a in cfg.adapters), "Weights": weights,
            "Density": f"{cfg.density} (kept fraction of each task vector)"})
        save_config(cfg, work)
    return {"weights": weights, "density": cfg.density, "rank": rank}


def compose(adapters, weights) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRAHub's composition: B = sum_i w_i B_i, A = sum_i w_i A_i, per module."""
    return {path: (sum(w * a.weights[path]["B"] for w, a in zip(weights, adapters)),
                   sum(w * a.weights[path]["A"] for w, a in zip(weights, adapters)))
            for path in adapters[0].weights}


def lorahub(cfg: LoraHubConfig) -> dict:
    """Search per-adapter weights gradient-free, then export the composed adapter to OUT."""
    import nevergrad as ng

    adapters = _check_adapters(cfg, form="paper")  # composition needs equal ranks
    alphas = {float(a.config["lora_alpha"]) for a in adapters}
    if len(alphas) > 1:
        raise OptionError("adapters", f"LoRAHub composes adapters with one lora_alpha, got {sorted(alphas)}")
    inputs = load_inputs(cfg, ("train",), limit=cfg.n_examples)
    examples, tok, device = inputs.examples["train"], inputs.tok, inputs.device
    model = load_model(cfg.model, str(device), cfg.dtype)
    layers = put_on(model, [adapters[0]], "sum", 0.0)  # one slot that each candidate fills
    probe = LossProbe(examples, tok.pad_token_id, device, cfg.eval_batch_size)

    def objective(w: np.ndarray) -> float:
        with torch.no_grad():
            for path, (B, A) in compose(adapters, w.tolist()).items():
                layers[path].lora_A[0].copy_(A)
                layers[path].lora_B[0].copy_(B)
        loss = probe(model)
        return loss + cfg.l1 * float(np.mean(np.abs(w)))

    param = ng.p.Array(init=np.zeros(len(adapters))).set_bounds(-cfg.bound, cfg.bound)
    param.random_state = np.random.RandomState(cfg.seed)
    optimizer = ng.optimizers.NGOpt(parametrization=param, budget=cfg.budget)
    history = []
    with warnings.catch_warnings():  # NGOpt's inner COBYLA complains of its own step settings: nothing to act on
        warnings.filterwarnings("ignore", message="COBYLA", category=UserWarning)
        for _ in range(cfg.budget):
            cand = optimizer.ask()
            value = objective(cand.value)
            optimizer.tell(cand, value)
            history.append({"weights": cand.value.tolist(), "objective": value})
        best = optimizer.provide_recommendation().value
    if not np.any(best):
        log.warning("lorahub: every weight is 0, so the exported adapter changes nothing (the l1 term outweighed "
                    "every loss gain); lower --l1 or raise --budget")
    best_value = objective(best)
    scale = next(iter(alphas))
    result = {"weights": best.tolist(), "objective": best_value, "evaluations": history}
    with staged_run(output_dir(cfg.out), resume=False) as work:
        write_peft_adapter(work, compose(adapters, best.tolist()), scale, adapters[0].dropout,
                           base_model_id(cfg.model))
        write_json(work / "lorahub.json", result)
        write_model_card(work, base_model_id(cfg.model), cfg.task, [cfg.lang], "LoRAHub composition (grasp-lora "
                         "lorahub)", {"Composed adapters": ", ".join(f"`{a}`" for a in cfg.adapters),
                                      "Weights": [round(w, 4) for w in best.tolist()],
                                      "Objective": f"{best_value:.4f} (loss on {cfg.n_examples} examples + l1)"})
        save_config(cfg, work)
    return result

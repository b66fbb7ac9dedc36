"""Batched greedy generation with left padding and the KV cache (SPEC §1.8)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import GenerateConfig, save_config
from .data.prompts import Prompt
from .data.records import references
from .data.tokenize import fit_prompt
from .files import write_jsonl
from .inputs import load_inputs
from .models import load_model, load_tokenizer, resolve

# (task, lang) -> max new tokens (paper); any other language takes the task's default.
MAX_NEW_TOKENS = {("summarization", "ar"): 128, ("summarization", "en"): 96, ("summarization", "zh"): 96}
TASK_MAX_NEW_TOKENS = {"qa": 64, "summarization": 96}
PROMPT_BUDGET = 2200  # prompt + new tokens


def max_new_tokens_for(task: str, lang: str) -> int:
    return MAX_NEW_TOKENS.get((task, lang), TASK_MAX_NEW_TOKENS[task])


def clean(text: str) -> str:
    """The prediction: newlines to spaces, stripped."""
    return " ".join(text.replace("\r", "\n").split("\n")).strip()


def stop_ids(model, tok) -> list[int]:
    """Every token that ends a generation: the model's generation config lists them (Llama-3-Instruct: 128001
    and 128009), the tokenizer knows one; both count."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = listed if isinstance(listed, list) else [listed]
    return sorted({*listed, tok.eos_token_id} - {None})


def decode_until_stop(tok, new_ids: list[int], stops: list[int]) -> str:
    """The text of the new tokens before the first stop token (a stop that is not a special token would
    otherwise be decoded into the prediction)."""
    cut = next((i for i, t in enumerate(new_ids) if t in stops), len(new_ids))
    return tok.decode(new_ids[:cut], skip_special_tokens=True)


@torch.no_grad()
def generate_texts(model, tok, prompt: Prompt, records: list[dict], max_new_tokens: int, batch_size: int = 8,
                   prompt_budget: int = PROMPT_BUDGET, use_cache: bool = True, desc: str = "generate") -> list[str]:
    """Greedy predictions for `records`, in their order. Batches are sorted by prompt length (left padded)."""
    device = next(model.parameters()).device
    prompts = [fit_prompt(tok, prompt, r, prompt_budget - max_new_tokens) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    preds: list[str] = [""] * len(prompts)
    stops = stop_ids(model, tok)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, dynamic_ncols=True):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, use_cache=use_cache, pad_token_id=tok.pad_token_id,
                             eos_token_id=stops, temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(idx):
            preds[i] = clean(decode_until_stop(tok, out[row, width:].tolist(), stops))
    model.train(was_training)
    return preds


def load_for_generation(cfg: GenerateConfig):
    """The base model, with a PEFT adapter on top when one is given (single, merged-export or composed), checked
    first against the base model it records."""
    if cfg.adapter:
        from .adapter_io import check_base, load_adapter_config

        check_base({cfg.adapter: load_adapter_config(cfg.adapter)}, cfg.model, cfg.allow_other_base)
    lm = load_model(cfg.model, cfg.device, cfg.dtype)
    if cfg.adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, cfg.adapter).eval()
    return lm


def generate(cfg: GenerateConfig) -> list[dict]:
    """Write one line per record: the record, `task`, `lang`, `index`, `prediction`, `references`."""
    inputs = load_inputs(cfg, (cfg.split,), limit=cfg.limit, encode=False)
    prompt, records, tok = inputs.prompt, inputs.records[cfg.split], inputs.tok
    tok.padding_side = "left"
    model = load_for_generation(cfg)
    max_new = cfg.max_new_tokens or max_new_tokens_for(cfg.task, cfg.lang)
    preds = generate_texts(model, tok, prompt, records, max_new, cfg.batch_size, cfg.prompt_budget,
                           desc=f"generate {cfg.task}/{cfg.lang}")
    rows = [{**r, "task": cfg.task, "lang": cfg.lang, "index": i, "prediction": p, "references": references(cfg.task, r)}
            for i, (r, p) in enumerate(zip(records, preds))]
    out = Path(cfg.out)
    write_jsonl(out, rows)
    save_config(cfg, out.parent, f"{out.stem}.config.yaml")
    return rows


def complete(cfg: GenerateConfig) -> str:
    """The greedy completion of cfg.prompt (in the tokenizer's chat template when it has one and
    cfg.chat_template), by the base model or the base model with cfg.adapter."""
    resolve(cfg.model)
    tok = load_tokenizer(cfg.model)
    text = cfg.prompt
    if cfg.chat_template and tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]  # the template holds its own special tokens
    else:
        ids = tok(text)["input_ids"]
    model = load_for_generation(cfg)
    device = next(model.parameters()).device
    stops = stop_ids(model, tok)
    out = model.generate(input_ids=torch.tensor([ids], device=device), max_new_tokens=cfg.max_new_tokens or 128,
                         do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=stops,
                         temperature=None, top_p=None, top_k=None)
    return decode_until_stop(tok, out[0, len(ids):].tolist(), stops).strip()

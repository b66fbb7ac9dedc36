"""`grasp-lora demo`: the protocol on the packaged SmolLM2 and the bundled demo corpus, on CPU.

Stages that exist so far: prepare en and ar QA splits from the bundled corpus, train the English
(source) and Arabic (target) adapters.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from .adapters import train_adapter
from .config import DataPrepareConfig, DemoConfig, TrainAdapterConfig, save_config
from .data.prepare import prepare_data

# Demo-scale splits: the target keeps the paper's 50/50/16/100; the source uses what the corpus has.
DEMO_SIZES = {"en": "200,50,0,50", "ar": "50,50,16,100"}


def corpus_file(task: str, lang: str) -> Path:
    return Path(str(resources.files("grasp_lora.data") / "demo" / f"{task}_{lang}.jsonl"))


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    save_config(cfg, out)
    times: dict[str, float] = {}
    results = {}
    for lang in ("en", "ar"):
        start = time.time()
        prepare_data(DataPrepareConfig(dataset="mlqa", lang=lang, input=str(corpus_file("qa", lang)),
                                       out=str(out / "data" / lang), seed=cfg.seed, sizes=DEMO_SIZES[lang]))
        times[f"data {lang}"] = time.time() - start
    for lang in ("en", "ar"):
        start = time.time()
        results[lang] = train_adapter(TrainAdapterConfig(
            model=cfg.model, device=cfg.device, dtype=cfg.dtype, data=str(out / "data" / lang), task="qa", lang=lang,
            out=str(out / "adapters" / lang), max_steps=cfg.max_steps, seed=cfg.seed))
        times[f"adapter {lang}"] = time.time() - start
    print("\nstage                 minutes")
    for stage, seconds in times.items():
        print(f"{stage:<20} {seconds / 60:8.2f}")
    for lang, s in results.items():
        print(f"{lang} adapter: best val loss {s['best_val_loss']:.4f} after {s['steps']} steps -> {out / 'adapters' / lang}")
    return {"times": times, "adapters": results}

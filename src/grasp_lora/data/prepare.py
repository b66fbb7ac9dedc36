"""`grasp-lora data prepare`: read a source, cut the paper's splits, write them as JSONL."""

from __future__ import annotations

from pathlib import Path

from ..config import DataPrepareConfig, save_config
from ..errors import OptionError
from ..files import write_json, write_jsonl
from ..languages import get_language
from .readers import read_hf, read_local
from .splits import SPLITS, check_unique_ids, cut, default_sizes, parse_sizes, scaled


def prepare_data(cfg: DataPrepareConfig) -> dict:
    """Validate everything first, then write DIR/{train,val,micro_dev,test}.jsonl, splits.json and config.yaml."""
    lang = get_language(cfg.lang, cfg.prompts)
    sizes = parse_sizes(cfg.sizes) if cfg.sizes else default_sizes(cfg.dataset, cfg.lang)
    if sum(sizes) == 0:
        raise OptionError({"sizes": cfg.sizes}, "all sizes are zero")
    if cfg.source == "hf":
        records, files = read_hf(cfg.input, cfg.dataset, cfg.hf_config, cfg.hf_split), [cfg.input]
    else:
        records, files = read_local(cfg.input, cfg.dataset, lang)
    source = ", ".join(files)
    check_unique_ids(records, source)
    note = None
    if sum(sizes) > len(records):
        if not cfg.scale_down:
            raise OptionError({"sizes": ",".join(map(str, sizes))},
                              f"{source} has {len(records)} records for language '{cfg.lang}', but the splits ask for "
                              f"{sum(sizes)}; pass <scale_down> or smaller sizes")
        note = f"source has {len(records)} records < {sum(sizes)} asked; sizes scaled down in proportion"
        sizes = scaled(sizes, len(records))
    splits = cut(records, sizes, cfg.seed)

    out = Path(cfg.out)
    for name in SPLITS:
        write_jsonl(out / f"{name}.jsonl", splits[name])
    summary = {"dataset": cfg.dataset, "lang": cfg.lang, "seed": cfg.seed, "sources": files,
               "available": len(records), "sizes": dict(zip(SPLITS, sizes)), "scaled_down": note}
    write_json(out / "splits.json", summary)
    save_config(cfg, out)
    return summary

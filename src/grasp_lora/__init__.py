"""GRASP LoRA: merge source and target LoRA adapters, prune them, and learn the prune ratio online.

The commands as Python functions (keyword arguments as their flags; see api.py): train_adapter, search,
finetune_merged, predict (generate --data), complete (generate --prompt), score (evaluate), run; and
merge_adapters / export_adapter for a `transformers` model you already hold.
"""

__version__ = "0.1.0"

API = ("train_adapter", "search", "finetune_merged", "predict", "complete", "score", "run", "merge_adapters",
       "export_adapter")


def __getattr__(name: str):
    """Import the API on first use: `import grasp_lora` stays light (the CLI reads only __version__)."""
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'grasp_lora' has no attribute {name!r}")

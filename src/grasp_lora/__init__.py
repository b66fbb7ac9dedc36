"""GRASP LoRA: merge source and target LoRA adapters, prune them, and learn the prune ratio online."""

__version__ = "0.1.0"

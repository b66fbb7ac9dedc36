"""The rows of the paper's table: each method's name (as `run --methods` takes it) and its label."""

METHODS = {
    "zero_shot": "Zero shot",
    "target_lora": "LoRA (target)",
    "ties": "TIES merge",
    "lorahub": "LoRAHub",
    "alm": "Adaptive LoRA Merge",
    "alm_grid": "Adaptive LoRA Merge + pruning (grid)",
    "grasp": "GRASP LoRA Merge + pruning",
    "grasp_one_run": "GRASP LoRA (one run)",
}

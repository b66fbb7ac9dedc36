"""Data: read sources, cut splits, build prompts, tokenize."""

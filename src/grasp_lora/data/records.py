"""The two record schemas every reader produces and every later stage reads."""

from __future__ import annotations

# task -> fields of a normalised record (besides `id`)
FIELDS = {
    "qa": ("context", "question", "answers"),
    "summarization": ("title", "article", "summary"),
}
TASKS = tuple(FIELDS)
# The field that over-long prompts lose tokens from, and the one the model learns to write.
LONG_FIELD = {"qa": "context", "summarization": "article"}


def target_text(task: str, record: dict) -> str:
    """QA learns the first gold answer (SPEC §1.2); summarization the summary."""
    return record["answers"][0] if task == "qa" else record["summary"]


def references(task: str, record: dict) -> list[str]:
    return list(record["answers"]) if task == "qa" else [record["summary"]]

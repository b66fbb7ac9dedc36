"""The README.md model card every adapter folder gets (as PEFT's save_pretrained writes one): base model,
languages, task, method, prune ratio, and the metrics once the adapter is evaluated."""

from __future__ import annotations

import re
from pathlib import Path

from .files import write_text
from .metrics import METRIC_LABELS
from .models import upstream_id

METRICS_HEADING = "## Metrics"


def write_model_card(folder: str | Path, base: str, task: str | None, langs: list[str], method: str,
                     facts: dict[str, object]) -> None:
    """folder/README.md: YAML front matter the Hub reads (base_model, library_name, language, tags), then the
    facts of how the adapter was made and how to load it. `task`/`langs`: None/[] when the method has none (TIES)."""
    hub = upstream_id(base)
    langs = list(dict.fromkeys(langs))
    lines = ["---", f"base_model: {hub or base}", "library_name: peft", "pipeline_tag: text-generation",
             *(["language:", *[f"- {lang}" for lang in langs]] if langs else []), "tags:", "- lora", "- peft",
             "- grasp-lora", "---", "", "# " + ", ".join([method, *([task] if task else []), *langs]), "",
             f"- **Base model**: `{base}`" + (f" (quantised from [{hub}](https://huggingface.co/{hub}))" if hub else "")]
    facts = {"Task": task, "Languages": ", ".join(langs) or None, "Method": method, **facts}
    lines += [f"- **{name}**: {value}" for name, value in facts.items() if value is not None]
    lines += ["", "A standard PEFT LoRA adapter, made with grasp-lora. Load it with", "", "```python",
              "from peft import AutoPeftModelForCausalLM", "",
              f'model = AutoPeftModelForCausalLM.from_pretrained("{Path(folder).name}")', "```", ""]
    write_text(Path(folder) / "README.md", "\n".join(lines))


def add_metrics(folder: str | Path, metrics: dict) -> None:
    """Put (or replace) the card's metrics section: the scores of `grasp-lora evaluate` on its split."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return
    text = re.split(rf"\n{METRICS_HEADING}\n", card.read_text(encoding="utf-8"))[0].rstrip("\n")
    scores = [f"| {label} | {metrics[k]:.2f} |" for k, label in METRIC_LABELS.items() if isinstance(metrics.get(k), float)]
    note = f"On {metrics.get('n')} test examples ({metrics.get('task')}, {metrics.get('lang')})."
    write_text(card, "\n".join([text, "", METRICS_HEADING, "", note, "", "| metric | score |", "|---|---|", *scores, ""]))

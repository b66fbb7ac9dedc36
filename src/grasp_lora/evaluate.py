"""`grasp-lora evaluate`: score a predictions file with the paper's metrics; every setting that changes a
number is written beside the numbers."""

from __future__ import annotations

from pathlib import Path

from .config import EvaluateConfig, save_config
from .data.readers import jsonl_rows
from .data.records import FIELDS
from .errors import OptionError, UserError
from .files import write_json


def read_predictions(cfg: EvaluateConfig) -> tuple[list[str], list[list[str]]]:
    """The predictions and references of cfg.predictions; rows made for another task or language are refused
    (generate writes `task` and `lang`; older files are known by their record fields)."""
    p = Path(cfg.predictions)
    if not p.is_file():
        raise OptionError({"predictions": cfg.predictions}, "no such file; write it with `grasp-lora generate`")
    preds, refs = [], []
    for n, row in jsonl_rows(p):
        pred, ref = row.get("prediction"), row.get("references")
        if not isinstance(pred, str):
            raise UserError(f"{p}: line {n} has no string 'prediction' field")
        if not isinstance(ref, list) or not ref or not all(isinstance(r, str) for r in ref):
            raise UserError(f"{p}: line {n} needs 'references', a non-empty list of strings")
        task = row.get("task") or next((t for t, names in FIELDS.items() if all(k in row for k in names)), None)
        for name, made_for in (("task", task), ("lang", row.get("lang"))):
            if made_for and made_for != getattr(cfg, name):
                raise OptionError({name: getattr(cfg, name)}, f"{p} was generated for {name} '{made_for}' (line {n});"
                                                              f" pass <{name}> {made_for}")
        preds.append(pred)
        refs.append(ref)
    return preds, refs


def check_against_data(cfg: EvaluateConfig, references: list[list[str]]) -> str | None:
    """Refuse predictions made for other data: the same references, line by line, for the whole split or its first
    N records (`generate --limit N`); returns a note on such a subset."""
    from .data.records import references as record_references
    from .data.splits import check_language, load_split

    check_language(cfg.data, cfg.lang)
    records = load_split(cfg.data, cfg.split, cfg.task)
    if len(references) > len(records):
        raise UserError(f"{cfg.predictions}: {len(references)} predictions but {cfg.data}/{cfg.split}.jsonl has "
                        f"{len(records)} records; generate again for this split")
    for n, (rec, refs) in enumerate(zip(records, references), 1):
        if record_references(cfg.task, rec) != refs:
            raise UserError(f"{cfg.predictions}: line {n}: references do not match record {rec['id']} of "
                            f"{cfg.split}.jsonl; were these predictions made for this data?")
    if len(references) < len(records):
        return f"the first {len(references)} of the {len(records)} records of {cfg.split}.jsonl"
    return None


def score(predictions: list[str], references: list[list[str]], task: str, code: str, cfg: EvaluateConfig) -> dict:
    from .languages import get_language
    from .metrics.bertscore import bertscore
    from .models import pick_device

    lang = get_language(code, cfg.prompts)
    out: dict = {"task": task, "lang": code, "n": len(predictions)}
    if task == "qa":
        from .metrics.qa import qa_scores

        out.update(qa_scores(predictions, references, lang))
        out["qa_normalization"] = (f"MLQA official (lowercase, Unicode punctuation, "
                                   f"{'articles' if lang.articles else 'no articles'}, {lang.tokenize} tokens)")
    else:
        from .metrics.bleu import bleu_tokenizer, corpus_bleu
        from .metrics.rouge import rouge_l

        first = [r[0] for r in references]
        out.update(corpus_bleu(predictions, first, bleu_tokenizer(lang, cfg.bleu_tokenize)))
        out.update(rouge_l(predictions, first, lang, cfg.rouge_tokenize))
    out.update(bertscore(predictions, references, code, cfg.bertscore_model, cfg.bertscore_layer,
                         cfg.bertscore_batch_size, str(pick_device(cfg.device))))
    return out


def evaluate(cfg: EvaluateConfig) -> dict:
    predictions, references = read_predictions(cfg)
    subset = check_against_data(cfg, references) if cfg.data else None
    metrics = score(predictions, references, cfg.task, cfg.lang, cfg)
    if subset:
        metrics["subset"] = subset
    metrics["predictions"] = str(cfg.predictions)
    write_json(cfg.out, metrics)
    save_config(cfg, Path(cfg.out).parent, f"{Path(cfg.out).stem}.config.yaml")
    return metrics

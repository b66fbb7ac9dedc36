"""Readers for MLQA's SQuAD-v1 JSON, XL-Sum's JSONL, the seeds' CSV layout, our own JSONL, and the HF hub.

Every reader returns normalised records (see records.FIELDS) and turns malformed input into a UserError
that names the file and what is wrong.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Iterable

from ..errors import OptionError, UserError
from ..languages import Language, as_language

log = logging.getLogger(__name__)

SPLIT_ORDER = {"train": 0, "val": 1, "dev": 1, "validation": 1, "test": 2}


def _nonempty_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; convert it to UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise UserError(f"{path}: empty file; no records to read")
    return text


def _str_field(path: Path, where: str, obj: dict, key: str) -> str:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{path}: {where} has no '{key}' field")
    value = obj[key]
    if not isinstance(value, str):
        raise UserError(f"{path}: {where} field '{key}' must be a string, got {type(value).__name__}")
    return value


def _qa(path: Path, where: str, id_: str, context: str, question: str, answers: list) -> dict:
    answers = [a for a in answers if isinstance(a, str) and a.strip()]
    if not answers:
        raise UserError(f"{path}: {where} has no non-empty answer")
    if not context.strip() or not question.strip():
        raise UserError(f"{path}: {where} has an empty context or question")
    return {"id": id_, "context": context, "question": question, "answers": answers}


def read_squad_json(path: Path) -> list[dict]:
    """MLQA / SQuAD v1: data[].paragraphs[].{context, qas[].{id, question, answers[].text}}."""
    text = _nonempty_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit integer, nesting deeper than Python's stack
        raise UserError(f"{path}: cannot be read as JSON ({str(e)[:80] or type(e).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: expected SQuAD-v1 JSON with a top-level 'data' list")
    out, spans = [], {"repaired": 0, "missing": 0, "first_missing": None}
    for a, article in enumerate(doc["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: data[{a}] has no 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _str_field(path, where, para, "context")
            qas = para.get("qas")
            if not isinstance(qas, list):
                raise UserError(f"{path}: {where} has no 'qas' list")
            for q, qa in enumerate(qas):
                w = f"{where}.qas[{q}]"
                question = _str_field(path, w, qa, "question")
                answers = qa.get("answers")
                if not isinstance(answers, list):
                    raise UserError(f"{path}: {w} has no 'answers' list")
                texts = [_str_field(path, f"{w}.answers[{i}]", ans, "text") for i, ans in enumerate(answers)]
                for i, (ans, t) in enumerate(zip(answers, texts)):
                    _check_span(context, ans.get("answer_start"), t, f"{w}.answers[{i}]", spans)
                id_ = str(qa.get("id", f"{path.stem}-{a}-{p}-{q}"))
                out.append(_qa(path, w, id_, context, question, texts))
    if not out:
        raise UserError(f"{path}: no question-answer pairs found")
    if spans["missing"]:
        raise UserError(f"{path}: {spans['missing']} answers do not occur in their context (first: "
                        f"{spans['first_missing']}); extractive QA needs answers taken from the context: fix or drop them")
    if spans["repaired"]:
        log.warning("%s: %d answer_start values did not point at their answer; taken from the answer text",
                    path, spans["repaired"])
    return out


def _check_span(context: str, start, text: str, where: str, spans: dict) -> None:
    """SQuAD's answer_start must point at the answer in the context: one that does not is repaired when the text
    occurs in the context (we keep texts, not offsets), and counted as missing when it does not."""
    if isinstance(start, int) and not isinstance(start, bool) and 0 <= start and context[start:start + len(text)] == text:
        return
    if text in context:
        spans["repaired"] += 1
    else:
        spans["missing"] += 1
        spans["first_missing"] = spans["first_missing"] or where


def jsonl_rows(path: Path) -> Iterable[tuple[int, dict]]:
    text = _nonempty_text(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}: line {n} cannot be read as JSON ({str(e)[:80] or type(e).__name__})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {n} is not a JSON object")
        yield n, row


def read_jsonl(path: Path, task: str) -> list[dict]:
    """XL-Sum JSONL (id, url, title, summary, text) or our normalised JSONL for either task."""
    out = []
    for n, row in jsonl_rows(path):
        where = f"line {n}"
        id_ = str(row.get("id", f"{path.stem}-{n}"))
        if task == "qa":
            answers = row.get("answers")
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list):
                raise UserError(f"{path}: {where} has no 'answers' field (a list of strings)")
            out.append(_qa(path, where, id_, _str_field(path, where, row, "context"),
                           _str_field(path, where, row, "question"), answers))
        else:
            article = row["text"] if "text" in row and "article" not in row else _str_field(path, where, row, "article")
            if not isinstance(article, str):
                raise UserError(f"{path}: {where} field 'text' must be a string")
            summary = _str_field(path, where, row, "summary")
            if not article.strip() or not summary.strip():
                raise UserError(f"{path}: {where} has an empty article or summary")
            out.append({"id": id_, "title": str(row.get("title", "")), "article": article, "summary": summary})
    if not out:
        raise UserError(f"{path}: no records found")
    return out


def read_csv(path: Path, task: str) -> list[dict]:
    """The seeds' CSV layout: context,question,answers_text (answers joined by '|'), or article,summary."""
    text = _nonempty_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))  # a quoted field may hold newlines: keep them
    rows = [(reader.line_num, row) for row in reader]
    header = [h.strip() for h in rows[0][1]]
    need = ("context", "question", "answers_text") if task == "qa" else ("article", "summary")
    missing = [c for c in need if c not in header]
    if missing:
        raise UserError(f"{path}: CSV header lacks column(s) {', '.join(missing)}; expected {','.join(need)}")
    col = {name: header.index(name) for name in need}
    out = []
    for n, row in rows[1:]:  # n: the line the record ends on
        if not row:
            continue
        if len(row) != len(header):
            raise UserError(f"{path}: line {n} has {len(row)} fields but the header has {len(header)}")
        where, id_ = f"line {n}", f"{path.stem}-{n}"
        if task == "qa":
            answers = [a.strip() for a in row[col["answers_text"]].split("|")]
            out.append(_qa(path, where, id_, row[col["context"]], row[col["question"]], answers))
        else:
            article, summary = row[col["article"]], row[col["summary"]]
            if not article.strip() or not summary.strip():
                raise UserError(f"{path}: {where} has an empty article or summary")
            out.append({"id": id_, "title": "", "article": article, "summary": summary})
    if not out:
        raise UserError(f"{path}: no records below the CSV header")
    return out


def read_file(path: Path, task: str) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        if task != "qa":
            raise UserError(f"{path}: SQuAD JSON holds QA data; use dataset mlqa, or give XL-Sum JSONL")
        return read_squad_json(path)
    if suffix == ".jsonl":
        return read_jsonl(path, task)
    if suffix == ".csv":
        return read_csv(path, task)
    raise UserError(f"{path}: unknown file type '{suffix}'; expected .json (SQuAD), .jsonl or .csv")


def files_in_folder(folder: Path, dataset: str, lang: Language) -> list[Path]:
    """The files of one language in a folder laid out as MLQA or XL-Sum ship them (XL-Sum: by the language's
    XL-Sum name, e.g. swahili_train.jsonl for sw, or by its code)."""
    if dataset == "mlqa":
        hints = [f"*context-{lang.code}-question-{lang.code}.json"]
        files = sorted(folder.glob(hints[0]))
    else:
        hints, files = [f"{name}_{{train,val,test}}.jsonl" for name in lang.xlsum_names], []
        for name in lang.xlsum_names:
            files = files or [p for p in folder.glob(f"{name}_*.jsonl") if p.stem[len(name) + 1:] in SPLIT_ORDER]
        files.sort(key=lambda p: SPLIT_ORDER[p.stem.rsplit("_", 1)[-1]])
    if not files:
        raise UserError(f"{folder}: no {dataset} file for language '{lang.code}' (looked for {' or '.join(hints)}); "
                        "pass the file itself as input")
    return files


def read_local(input_path: str, dataset: str, lang: str | Language) -> tuple[list[dict], list[str]]:
    """Records and the files they came from, in file order."""
    path = Path(input_path).expanduser()
    task = "qa" if dataset == "mlqa" else "summarization"
    if path.is_dir():
        files = files_in_folder(path, dataset, as_language(lang))
    elif path.is_file():
        files = [path]
    else:
        raise OptionError({"input": input_path}, "no such file or folder")
    records = [r for f in files for r in read_file(f, task)]
    return records, [str(f) for f in files]


def read_hf(dataset_id: str, dataset: str, config: str | None, split: str) -> list[dict]:
    """Read a hub dataset (only with --source hf). MLQA: facebook/mlqa; XL-Sum: csebuetnlp/xlsum."""
    try:
        import datasets
    except ImportError:
        raise OptionError({"source": "hf"}, "needs the `datasets` package; run `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # the hub raises many kinds; the user needs the one line
        raise OptionError({"input": dataset_id}, f"cannot load from the hub ({str(e).splitlines()[0]})") from None
    out = []
    for i, row in enumerate(ds):
        if dataset == "mlqa":
            answers = row["answers"]["text"] if isinstance(row["answers"], dict) else row["answers"]
            out.append(_qa(Path(dataset_id), f"row {i}", str(row.get("id", i)), row["context"], row["question"], answers))
        else:
            out.append({"id": str(row.get("id", i)), "title": row.get("title", ""), "article": row["text"],
                        "summary": row["summary"]})
    return out

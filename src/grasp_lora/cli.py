"""`grasp-lora`: thin. Parse flags -> build the command's typed config -> call one function.

Every field of a command's config is a flag of the same name (`max_steps` -> `--max-steps`), and
`--config FILE.yaml` loads the same names from YAML; flags win over the file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import sys
import typing
import warnings
from typing import Any, Callable

from . import __version__
from .config import (ALIASES, DataPrepareConfig, DemoConfig, EvaluateConfig, ExperimentConfig, FinetuneMergedConfig,
                     GenerateConfig, LoraHubConfig, ReportConfig, SearchConfig, TiesConfig, TrainAdapterConfig, build,
                     field_types, is_required)
from .errors import NumericalError, OptionError, UserError
from .files import output_lock, read_yaml


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _help(f: dataclasses.Field) -> str:
    """A field's help with its default, unless the text already says it (or there is none to say)."""
    text = f.metadata.get("help", "")
    if is_required(f):
        return f"{text} (required)"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None or "default" in text:
        return text
    return f"{text} (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"


def _add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    types_ = field_types(cls)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the options below")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more")
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(f), "dest": f.name}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        options = [flag(f.name)] + [flag(alias) for alias, name in ALIASES.items() if name == f.name]
        if f.metadata.get("positional"):
            kwargs.pop("dest")
            nargs = "*" if typing.get_origin(tp) is list else "?"
            parser.add_argument(f.name, nargs=nargs, metavar=f.name.upper(), **kwargs)
        elif tp is bool:
            parser.add_argument(*options, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(tp) is list:
            parser.add_argument(*options, nargs="+", metavar=f.name.upper(), **kwargs)
        else:
            metavar = None if kwargs.get("choices") else f.name.upper()
            parser.add_argument(*options, type=str, metavar=metavar, **kwargs)


def _command(sub, name: str, cls, fn: Callable[[Any], Any], help_: str, locks_out: bool = True):
    """A subcommand whose flags are `cls`'s fields; `locks_out`: it writes the folder --out (locked meanwhile)."""
    p = sub.add_parser(name, help=help_, description=help_)
    _add_config_flags(p, cls)
    p.set_defaults(_cls=cls, _fn=fn, _name=name, _locks=locks_out, _parser=p)
    return p


def _data_prepare(cfg: DataPrepareConfig):
    from .data.prepare import prepare_data

    summary = prepare_data(cfg)
    sizes = ", ".join(f"{k} {v}" for k, v in summary["sizes"].items())
    print(f"wrote {cfg.out}: {sizes}" + (f" ({summary['scaled_down']})" if summary["scaled_down"] else ""))


def _train_adapter(cfg: TrainAdapterConfig):
    from .adapter_training import train_adapter

    s = train_adapter(cfg)
    print(f"adapter in {cfg.out}: best val loss {s['best_val_loss']:.4f} after {s['steps']} steps ({s['stopped']})")


def _search(cfg: SearchConfig):
    from .controller_run import search

    r, _ = search(cfg)
    print(f"learned prune ratio {r['prune_ratio']:.4f} ({r['controller']} controller, {r['rule']} rule) after "
          f"{r['rounds']} rounds -> {cfg.out}/ratio.json")
    if r["from_prior"]:
        print(f"note: p* is within 0.05 of p_init {cfg.p_init} and sigma never fell below its start: this ratio is "
              "the prior, not a finding (more rounds, or another --p-init, would tell)")
    if r.get("twin_steps") == 0:
        print(f"note: the first pass over the training set ends within the {cfg.hold_rounds} held rounds of "
              f"{cfg.round_every} steps, so the centre could not move and the second member did not train: p* is "
              "p_init. Give the search more training examples (or a shorter --hold-rounds)")
    elif "online_steps" in r:
        print(f"note: the members' online losses are held out on the first pass over the training set only (steps "
              f"1-{r['online_steps']} of {r['steps']}); the rounds after it held the centre: give the search more "
              "training examples or fewer steps, or score on the micro-dev set (--probe-loss micro_dev)")


def _finetune_merged(cfg: FinetuneMergedConfig):
    from .final_run import finetune_merged

    s, _ = finetune_merged(cfg)
    print(f"merged adapter in {cfg.out}/adapter: best val loss {s['best_val_loss']:.4f} after {s['steps']} steps, "
          f"kept {s['kept_fraction']:.3f} of the adapter weights")


def _ties(cfg: TiesConfig):
    from .baselines import ties_merge

    r = ties_merge(cfg)
    print(f"TIES adapter (rank {r['rank']}, density {r['density']}) in {cfg.out}")


def _lorahub(cfg: LoraHubConfig):
    from .baselines import lorahub

    r = lorahub(cfg)
    print(f"LoRAHub weights {[round(w, 4) for w in r['weights']]} (objective {r['objective']:.4f}) -> {cfg.out}")


def _generate(cfg: GenerateConfig):
    from .generate import complete, generate

    if cfg.prompt is not None:
        print(complete(cfg))
        return
    rows = generate(cfg)
    print(f"wrote {len(rows)} predictions to {cfg.out}")


def _evaluate(cfg: EvaluateConfig):
    from .evaluate import evaluate

    m = evaluate(cfg)
    names = ("exact_match", "f1", "bleu", "rouge_l", "bertscore_f1")
    print(", ".join(f"{k} {m[k]:.2f}" for k in names if isinstance(m.get(k), float))
          + (f"; BERTScore unavailable: {m['bertscore_unavailable']}" if m.get("bertscore_unavailable") else ""))


def _report(cfg: ReportConfig):
    from .report import report

    r = report(cfg)
    print(f"wrote {r['out']}/results.md, results.csv, runtime.md, controller.png, metrics.png "
          f"({len(r['results'])} result rows)")


def _run(cfg: ExperimentConfig):
    from .pipeline import run_experiment

    tables = run_experiment(cfg)
    print_tables(cfg.out, tables)


def print_tables(out: str, tables: dict) -> None:
    from .report import results_markdown, runtime_markdown

    print(results_markdown(tables["results"]))
    print(runtime_markdown(tables["runtime"]))
    print(f"report: {out}/report/results.md, runtime.md, controller.png, metrics.png")


def _demo(cfg: DemoConfig):
    from .demo import run_demo

    print_tables(cfg.out, run_demo(cfg))


def flag(name: str) -> str:
    """A config field's flag: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="grasp-lora", description="GRASP LoRA: merge, prune and learn the prune ratio of LoRA adapters.")
    parser.add_argument("--version", action="version", version=f"grasp-lora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    _command(data_sub, "prepare", DataPrepareConfig, _data_prepare,
             "read MLQA / XL-Sum / CSV / hub data and cut the paper's train/val/micro_dev/test splits")
    _command(sub, "train-adapter", TrainAdapterConfig, _train_adapter,
             "train one LoRA adapter (the paper's single-adapter recipe) and save it as a PEFT adapter")
    _command(sub, "search", SearchConfig, _search,
             "the controller run: learn the prune ratio of merged adapters online (history.jsonl, ratio.json)")
    _command(sub, "finetune-merged", FinetuneMergedConfig, _finetune_merged,
             "the final run: merge adapters, prune at a fixed ratio, fine-tune, export one PEFT adapter")
    _command(sub, "ties", TiesConfig, _ties, "baseline: TIES-merge adapters (PEFT), no training; one PEFT adapter out")
    _command(sub, "lorahub", LoraHubConfig, _lorahub,
             "baseline: LoRAHub, per-adapter weights by nevergrad NGOpt on a few target examples; one PEFT adapter out")
    _command(sub, "generate", GenerateConfig, _generate,
             "greedy predictions for a split (base model, a single adapter, or an exported merged adapter)",
             locks_out=False)
    _command(sub, "evaluate", EvaluateConfig, _evaluate,
             "EM/F1 (qa) or BLEU/ROUGE-L (summarization), and BERTScore-F1, of a predictions file", locks_out=False)
    _command(sub, "report", ReportConfig, _report,
             "the paper's tables (ours beside the paper's), the runtime table and plots from run folders")
    _command(sub, "run", ExperimentConfig, _run,
             "the whole protocol for one task, source -> target: data, adapters, baselines, grid, GRASP, report")
    _command(sub, "demo", DemoConfig, _demo,
             "run the protocol end to end on the packaged SmolLM2 and the bundled demo corpus (CPU)")
    return parser


def command_config(args: argparse.Namespace):
    """The command's typed config from its parsed flags and `--config` file (flags win)."""
    overrides = {k: v for k, v in vars(args).items()
                 if not k.startswith("_") and k not in ("config", "command", "data_command", "verbose")}
    config_file = args.config or overrides.get("experiment")  # `run EXPERIMENT.yaml` is its config
    yaml_values = read_yaml(config_file) if config_file else {}
    return build(args._cls, yaml_values, overrides, source=config_file or "options")


def _did_you_mean(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """' (did you mean --learning-rate?)' for the first unknown flag that is close to one of the command's."""
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=")[0], list(parser._option_string_actions), n=1, cutoff=0.6)
        if arg.startswith("-") and close:
            return f" (did you mean {close[0]}?)"
    return ""


def main(argv: list[str] | None = None) -> int:
    # PEFT calls a transformers method that warns of its own rename; nothing for our users to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hint = _did_you_mean(unknown, getattr(args, "_parser", parser))
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        cfg = command_config(args)
        lock = (output_lock(cfg.out, f"grasp-lora {args._name}")
                if args._locks and cfg.out and int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext())
        with lock:
            args._fn(cfg)
    except (UserError, NumericalError) as e:
        message = e.render(flag) if isinstance(e, OptionError) else str(e)
        print(f"grasp-lora: error: {message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("grasp-lora: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

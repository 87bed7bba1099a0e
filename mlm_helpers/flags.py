"""The command line's flags: one per `TrainConfig` field for train and evaluate, so the command line and
the notebook share one set of defaults, and each other command's own."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from .config import PRESETS, TrainConfig, config_default, make_config
from .predict.predictor import BATCH_SIZE, TOP_K
from .predict.scoring import SCORE_BATCH_SIZE, VARIANT, VARIANTS


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay absent so presets can fill them in."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        options = {k: v for k, v in field.metadata.items() if k != "help"}
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # "X | None" -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = typing.get_args(kind)
        elif typing.get_origin(kind) is list:
            options["type"] = typing.get_args(kind)[0]
        else:
            options["type"] = kind
        default = field.default
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=argparse.SUPPRESS,
            help=f"{field.metadata['help']} (default: {default})",
            **options,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlm_helpers",
        description="Fine-tune BERT with masked language modeling, evaluate it, and predict [MASK] words.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "Fine-tune a model; evaluates before and after, saves the model and the reports."),
        ("evaluate", "Evaluate a model on the held-out examples of a data source, without training."),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            default=None,
            help="Start from a named set of settings; other flags override it. "
            "'quick': a small BERT on the shipped sample text, offline, a few minutes on a CPU.",
        )
        add_config_flags(sub)
    _add_predict_parser(commands)
    _add_score_parser(commands)
    _add_export_parser(commands)
    _add_push_parser(commands)
    return parser


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="Top-k predictions for the masks in texts given as arguments or on standard input.",
        description="Top-k predictions for the masks in texts given as arguments or on standard input. "
        "A mask is written as the model's mask token (<mask> for RoBERTa) or as [MASK], which works with "
        "every model. Each mask is predicted on its own (as pipeline('fill-mask') does), or with --joint "
        "all masks of a text are filled together.",
    )
    predict.add_argument(
        "texts",
        nargs="*",
        help="Texts with [MASK] (or the model's mask token); read one per line from stdin if absent.",
    )
    predict.add_argument(
        "--model",
        default=config_default("model_dir"),
        help="Model folder, Hub id, or ONNX export folder (default: %(default)s)",
    )
    predict.add_argument(
        "--top-k", type=int, default=TOP_K, help="Candidates per mask (default: %(default)s)"
    )
    predict.add_argument("--json", action="store_true", help="Print one JSON object per text.")
    predict.add_argument(
        "--target",
        action="append",
        dest="targets",
        metavar="WORD",
        help="Score only this word, in the form it takes after a space (repeat for several); a word of "
        "several pieces is scored whole.",
    )
    predict.add_argument(
        "--joint",
        action="store_true",
        help="Fill all masks of a text together and print the --top-k best whole texts.",
    )
    predict.add_argument("--beam-width", type=int, default=None, help="Beam for --joint (default: --top-k)")
    for what, text in (
        ("special", "special tokens"),
        ("punctuation", "punctuation"),
        ("subwords", "pieces that only continue a word, such as the 'ing' of 'walking'"),
    ):
        predict.add_argument(f"--exclude-{what}", action="store_true", help=f"Never offer {text}.")
    predict.add_argument(
        "--batch-size", type=int, default=BATCH_SIZE, help="Texts per forward pass (default: %(default)s)"
    )
    predict.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    predict.add_argument("--bf16", action="store_true", help="Compute in bfloat16 (GPUs, recent CPUs).")
    _add_file_flags(predict)


def _add_file_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        type=Path,
        default=None,
        metavar="FILE",
        help="Read the texts from FILE, one per line (a .jsonl file: records with a 'text' field), in "
        "chunks; a line that fails becomes an error record with its line number and the run goes on.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="Write one JSON record per text to FILE (JSONL), with a progress bar on stderr.",
    )


def _add_score_parser(commands) -> None:
    text = (
        "Score whole texts with the masked LM: the pseudo-log-likelihood (each token masked in turn) and "
        "pseudo-perplexity of each."
    )
    score = commands.add_parser("score", help=text, description=text)
    score.add_argument(
        "texts", nargs="*", help="Texts to score; read one per line from stdin if absent or '-'."
    )
    score.add_argument(
        "--model",
        default=config_default("model_dir"),
        help="Model folder, Hub id, or ONNX export folder (default: %(default)s)",
    )
    score.add_argument("--json", action="store_true", help="Print one JSON record per text.")
    score.add_argument(
        "--variant",
        choices=VARIANTS,
        default=VARIANT,
        help="word-l2r also masks the rest of a scored piece's word to its right (Kauf & Ivanova 2023); "
        "original masks the piece alone (Salazar et al. 2020) (default: %(default)s)",
    )
    score.add_argument(
        "--batch-size",
        type=int,
        default=SCORE_BATCH_SIZE,
        help="Masked copies per forward pass (default: %(default)s)",
    )
    score.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    score.add_argument("--bf16", action="store_true", help="Compute in bfloat16 (GPUs, recent CPUs).")
    _add_file_flags(score)


def _add_export_parser(commands) -> None:
    text = "Export a model to ONNX for the ONNX Runtime backend; checked against PyTorch before it is kept."
    export = commands.add_parser("export", help=text, description=text)
    export.add_argument(
        "--model", default=config_default("model_dir"), help="Model folder or Hub id (default: %(default)s)"
    )
    export.add_argument("--output", default="bert_onnx", help="Folder to write (default: %(default)s)")
    export.add_argument(
        "--quantize",
        action="store_true",
        help="Store weights in int8: about twice as fast on a CPU, probabilities move by a few percent.",
    )


def _add_push_parser(commands) -> None:
    text = "Upload a model folder that train saved, with its run's loss plot, to a Hugging Face Hub repo."
    push = commands.add_parser(
        "push", help=text, description=text + " Needs a token: hf auth login, or HF_TOKEN."
    )
    push.add_argument("repo_id", metavar="REPO_ID", help="NAME or OWNER/NAME; created if it does not exist.")
    push.add_argument(
        "--model", default=config_default("model_dir"), help="Model folder train saved (default: %(default)s)"
    )
    push.add_argument(
        "--output-dir",
        default=config_default("output_dir"),
        help="The run's output folder: its loss.png goes along when its summary.json names this model "
        "folder (default: %(default)s)",
    )
    push.add_argument(
        "--private", action="store_true", help="Create the repo private (an existing repo stays as it is)."
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return make_config(args.preset, **given)

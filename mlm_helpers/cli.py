"""argv -> config -> library call -> exit code.

The flags are in flags.py. Errors the user can fix print one message and exit with status 2, with no
traceback; anything else is a bug, and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .config import ConfigError, TrainConfig
from .flags import build_parser, config_from_args
from .predict.inputs import PredictionError
from .predict.predictor import EXAMPLE_SENTENCES, predict_top_k_masked_word

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("train", "evaluate"):
            return _train_or_evaluate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "push":
            return _push(args)
        if args.command == "score":
            return _score(args)
        return _predict(args)
    except (ConfigError, PredictionError) as error:  # what users can fix: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as error:  # train says what it saved; the other commands write nothing
        print(f"interrupted: {error}" if str(error) else "interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        print(
            "error: mlm_helpers failed in a way it does not expect, which is a bug: please report it with "
            "the traceback below.",
            file=sys.stderr,
        )
        raise


def _train_or_evaluate(args: argparse.Namespace) -> int:
    # The training stack (Accelerate, datasets, torch.distributed) is imported here, by the commands that
    # use it: the others start seconds sooner.
    from .training.distributed import leave_process_group
    from .training.loop import NonFiniteError

    try:
        code = (_train if args.command == "train" else _evaluate)(config_from_args(args))
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    leave_process_group()
    return code


def _train(cfg: TrainConfig) -> int:
    from .modeling import load_model
    from .training.run import train

    result = train(cfg)
    if not result.main_process:
        return 0  # the main process reports for all
    print(f"\nTrained {result.steps} steps in {result.seconds:.0f} s on {result.device}.\n")
    print(result.table())
    model, tokenizer = load_model(result.model_dir)
    kept = (
        f" the model of step {result.best_step}, the lowest held-out loss,"
        if result.best_step is not None
        else ""
    )
    print(f"\nSaved{kept} to {result.model_dir}/ and reloaded from there. Predictions of the reloaded model:")
    for text in EXAMPLE_SENTENCES:
        candidates = predict_top_k_masked_word(text, model, tokenizer, top_k=5)[0]
        print(f"  {text}\n    " + ", ".join(f"{c.word} ({c.probability:.2f})" for c in candidates))
    print(
        f"\nMetrics: {result.output_dir}/metrics.jsonl, plot: {result.output_dir}/loss.png, "
        f"summary: {result.output_dir}/summary.json"
    )
    return 0


def _evaluate(cfg: TrainConfig) -> int:
    from accelerate import PartialState

    from .training.run import evaluate_config

    metrics = evaluate_config(cfg)
    if PartialState().is_main_process:  # launched as several processes, they report one result
        print(json.dumps({"model": cfg.model, **metrics.as_dict()}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict.predictor import Predictor

    if args.input is not None or args.output is not None:
        return _predict_files(args)
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise PredictionError(
            "No text given: pass texts with [MASK] (or the model's mask token) as arguments or on standard "
            "input."
        )
    predictor = Predictor.load(args.model, device=args.device, bf16=args.bf16, batch_size=args.batch_size)
    exclude = {
        f"exclude_{what}": getattr(args, f"exclude_{what}") for what in ("special", "punctuation", "subwords")
    }
    if args.joint:
        if args.targets:
            raise PredictionError("--target scores words for each mask on its own: drop --joint or --target.")
        fillings = predictor.fill(texts, args.top_k, beam_width=args.beam_width, **exclude)
        for text, options in zip(texts, fillings):
            if args.json:
                print(json.dumps({"text": text, "fillings": [f.as_dict() for f in options]}))
            else:
                print(text + "".join(f"\n  {f.probability:.3g}  {f.sequence}" for f in options))
        return 0
    for result in predictor.predict(texts, args.top_k, targets=args.targets, **exclude):
        if args.json:
            masks = [[c.as_dict() for c in candidates] for candidates in result.masks]
            print(json.dumps({"text": result.text, "masks": masks}))
        else:
            print(result.text)
            for number, candidates in enumerate(result.masks, start=1):
                shown = ", ".join(f"{c.word} ({c.probability:.3f})" for c in candidates)
                print(f"  {predictor.mask} {number}: {shown}")
    return 0


def _predict_files(args: argparse.Namespace) -> int:
    """predict --input/--output: the texts streamed in chunks, one JSON record each as --json prints."""
    from .predict.predictor import Predictor

    if args.joint and args.targets:
        raise PredictionError("--target scores words for each mask on its own: drop --joint or --target.")
    predictor = Predictor.load(args.model, device=args.device, bf16=args.bf16, batch_size=args.batch_size)
    exclude = {f"exclude_{w}": getattr(args, f"exclude_{w}") for w in ("special", "punctuation", "subwords")}

    def answer(texts: list[str]) -> list[dict]:
        if args.joint:
            fillings = predictor.fill(texts, args.top_k, beam_width=args.beam_width, **exclude)
            return [
                {"text": t, "fillings": [f.as_dict() for f in options]} for t, options in zip(texts, fillings)
            ]
        results = predictor.predict(texts, args.top_k, targets=args.targets, **exclude)
        return [{"text": r.text, "masks": [[c.as_dict() for c in cs] for cs in r.masks]} for r in results]

    answer([predictor.mask])  # a bad --top-k or --target stops the run here, not on every line
    return _files_exit(args, answer, None)


def _score(args: argparse.Namespace) -> int:
    from .predict.inputs import check_count
    from .predict.predictor import Predictor

    check_count(args.batch_size, "--batch-size", 2**20)  # here, not once for every line
    predictor = Predictor.load(args.model, device=args.device, bf16=args.bf16)

    def answer(texts: list[str]) -> list[dict]:
        scores = predictor.score(texts, variant=args.variant, batch_size=args.batch_size)
        return [score.as_dict() for score in scores]

    def show(record: dict) -> str:
        return f"{record['pppl']:.4g}\t{record['pll']:.4f}\t{record['token_count']}\t{record['text']}"

    if args.texts == ["-"]:
        args.texts = []
    return _files_exit(args, answer, None if args.json else show)


def _files_exit(args: argparse.Namespace, answer, show) -> int:
    """Run `answer` over the texts of the arguments, --input or stdin; exit 1 when some lines failed."""
    from .predict.batch_files import run_file

    if args.texts and args.input is not None:
        raise PredictionError("Give the texts as arguments or as --input FILE, not both.")
    failures = run_file(args.input, args.output, answer, show, args.texts or None)
    if failures:
        print(
            f"error: {failures} text(s) failed; each is an error record with its line number.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def _export(args: argparse.Namespace) -> int:
    from .fileio import check_replaceable
    from .modeling import load_model
    from .predict.onnx_backend import ONNX_FILE, export_onnx

    check_replaceable(args.output, "--output")  # before the slow part; the export checks again
    model, tokenizer = load_model(args.model)
    result = export_onnx(model, tokenizer, args.output, quantize=args.quantize)
    size = (result.folder / ONNX_FILE).stat().st_size / 2**20
    kind = "int8 weights" if result.quantized else "float32"
    print(
        f"Exported {args.model} to {result.folder / ONNX_FILE} ({size:.0f} MiB, {kind}); largest logit "
        f"difference from PyTorch on a check batch: {result.max_difference:.2g}.\n"
        f'Predict with it: python -m mlm_helpers predict --model {result.folder} "Some [MASK] text."'
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    from .publish import check_model_folder, check_push, push_model, run_plot

    check_model_folder(args.model)  # local checks first, then the Hub's, then the upload
    check_push(args.repo_id, "REPO_ID")
    plot = run_plot(args.model, args.output_dir)
    url = push_model(args.model, args.repo_id, args.private, plot)
    print(f"Pushed {args.model}" + (f" and {plot}" if plot else "") + f" to {url}")
    return 0

"""One fine-tuning job from a config: data, model, evaluation before, training, evaluation after, save.

`train(cfg)` is what the command line and the notebook call. It checks everything it can before any
download, then reports through `outputs/metrics.jsonl`, `outputs/loss.png` and `outputs/summary.json`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from .checkpoint import MetricsLog, plot_losses, save_model, write_text_atomic
from .config import TrainConfig
from .data import TextSource, iter_texts, make_examples, open_stream, split_stream
from .hub import in_hub_cache, require_hub
from .masking import MaskedLanguageModelingDataset, MaskingRule, Vocabulary, collate
from .modeling import (
    SparseMaskedLM,
    build_scratch_model,
    check_max_length,
    load_pretrained,
    scratch_vocab_size,
    train_wordpiece_tokenizer,
)
from .stream import ExampleStream
from .training import (
    EvalMetrics,
    build_optimizer,
    build_schedule,
    evaluate,
    resolve_mixed_precision,
    train_loop,
)

# Held-out examples are masked once with this seed, whatever the run's seed, so that evaluations
# before and after training, and across runs, score exactly the same tokens.
EVAL_SEED = 20_240_601
TOKENIZER_TRAINING_ROWS = 200_000  # enough text for a small vocabulary; bounds the time on big streams


@dataclass
class RunResult:
    """What a training run produced."""

    before: EvalMetrics
    after: EvalMetrics
    model_dir: Path
    output_dir: Path
    steps: int
    seconds: float
    device: str
    mixed_precision: str
    history: list[dict] = field(default_factory=list)

    def table(self) -> str:
        """Before/after metrics as a small text table."""
        rows = [
            ("loss", "loss", "{:.3f}"),
            ("perplexity", "perplexity", "{:.1f}"),
            ("top-1 accuracy", "top1", "{:.1%}"),
            ("top-5 accuracy", "top5", "{:.1%}"),
        ]
        lines = [f"{'metric':<16}{'before':>10}{'after':>10}"]
        for label, key, fmt in rows:
            before, after = getattr(self.before, key), getattr(self.after, key)
            lines.append(f"{label:<16}{fmt.format(before):>10}{fmt.format(after):>10}")
        return "\n".join(lines)


def masking_rule(cfg: TrainConfig) -> MaskingRule:
    return MaskingRule(
        cfg.mlm_probability, cfg.mask_replace_prob, cfg.random_replace_prob, cfg.whole_word_masking
    )


def load_model_for(cfg: TrainConfig, train_rows) -> tuple[torch.nn.Module, object]:
    """The model and tokenizer a config names; a scratch model gets a vocabulary trained on `train_rows`."""
    if not cfg.is_scratch:
        return load_pretrained(cfg.model, max_length=cfg.max_length)
    texts = islice(iter_texts(train_rows, cfg.text_column), TOKENIZER_TRAINING_ROWS)
    tokenizer = train_wordpiece_tokenizer(texts, scratch_vocab_size(cfg.model), max_length=512)
    model = build_scratch_model(cfg.model.split(":", 1)[1], len(tokenizer), seed=cfg.seed)
    check_max_length(model.config, cfg.max_length)
    return model, tokenizer


def eval_batches(rows, tokenizer, cfg: TrainConfig, vocab: Vocabulary) -> list[dict[str, torch.Tensor]]:
    """The held-out rows, tokenized like training data and masked once with EVAL_SEED."""
    examples = list(
        make_examples(
            iter_texts(rows, cfg.text_column), tokenizer, cfg.max_length, cfg.packing, drop_last=False
        )
    )
    masked = list(
        MaskedLanguageModelingDataset(examples, vocab=vocab, rule=masking_rule(cfg), seed=EVAL_SEED)
    )
    pad = tokenizer.pad_token_id
    return [collate(masked[i : i + cfg.batch_size], pad) for i in range(0, len(masked), cfg.batch_size)]


def prepare(cfg: TrainConfig):
    """Open the data and load the model: everything that can fail on bad input, before training.

    Local data is checked before any download; a Hub model's small config (and its length limit) is
    checked before its weights.
    """
    source = TextSource.from_config(cfg)
    stream = open_stream(source) if source.data_files else None  # local files: no network needed
    needs = [f"the dataset {cfg.dataset!r}"] if stream is None else []
    if not (cfg.is_scratch or Path(cfg.model).exists() or in_hub_cache(cfg.model)):
        needs.append(f"the model {cfg.model!r}")
    if needs:
        require_hub(" and ".join(needs))  # one clear message, in seconds, when offline
    stream = stream or open_stream(source)
    held_out, train_rows = split_stream(stream, cfg.eval_size)
    model, tokenizer = load_model_for(cfg, train_rows)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    examples = ExampleStream(
        train_rows, cfg.text_column, tokenizer, cfg.max_length, cfg.packing, cfg.shuffle_buffer, cfg.seed
    )
    start = examples.state_dict()
    next(iter(examples))  # raises ConfigError now if the training text cannot fill one example
    examples.load_state_dict(start)
    dataset = MaskedLanguageModelingDataset(examples, vocab=vocab, rule=masking_rule(cfg), seed=cfg.seed)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id)
    )
    return model, tokenizer, loader, eval_batches(held_out, tokenizer, cfg, vocab)


def train(cfg: TrainConfig) -> RunResult:
    """Fine-tune the model a config names on its data, and save it; see the module docstring."""
    set_seed(cfg.seed)  # dropout draws from the global generator: seed it from the config
    started = time.perf_counter()
    model, tokenizer, loader, held_out = prepare(cfg)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision)
    module = SparseMaskedLM(model)
    optimizer = build_optimizer(module, cfg.learning_rate, cfg.weight_decay)
    schedule = build_schedule(optimizer, cfg.warmup_steps, cfg.max_steps)
    module, optimizer = accelerator.prepare(module, optimizer)

    output_dir = Path(cfg.output_dir)
    log = MetricsLog(output_dir / "metrics.jsonl")

    def run_eval(step: int) -> EvalMetrics:
        metrics = evaluate(accelerator.unwrap_model(module), held_out, accelerator)
        log.append({"step": step, **{f"eval_{k}": v for k, v in metrics.as_dict().items()}})
        return metrics

    before = run_eval(0)
    train_loop(
        module,
        optimizer,
        schedule,
        iter(loader),
        accelerator,
        max_steps=cfg.max_steps,
        accumulation=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        on_log=log.append,
        on_eval=run_eval,
        progress=cfg.progress,
    )
    after = run_eval(cfg.max_steps)

    trained = accelerator.unwrap_model(module).model
    result = RunResult(
        before,
        after,
        Path(cfg.model_dir),
        output_dir,
        cfg.max_steps,
        time.perf_counter() - started,
        str(accelerator.device),
        precision,
        log.records,
    )
    save_model(trained, tokenizer, cfg.model_dir, model_card(cfg, result))
    plot_losses(log.records, output_dir / "loss.png")
    summary = {
        "config": cfg.to_dict(),
        "before": before.as_dict(),
        "after": after.as_dict(),
        "steps": cfg.max_steps,
        "seconds": result.seconds,
        "device": result.device,
        "mixed_precision": precision,
    }
    write_text_atomic(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def evaluate_config(cfg: TrainConfig) -> EvalMetrics:
    """Evaluate the model a config names on its held-out examples, without training."""
    model, tokenizer, _, held_out = prepare(cfg)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision))
    module = SparseMaskedLM(model).to(accelerator.device)
    return evaluate(module, held_out, accelerator)


def model_card(cfg: TrainConfig, result: RunResult) -> str:
    source = TextSource.from_config(cfg).describe()
    return f"""# Fine-tuned masked-language model

Written by `mlm_helpers` (bert-mlm-finetuning).

- Base model: `{cfg.model}`
- Data: {source}, {cfg.packing} examples of {cfg.max_length} tokens, {cfg.eval_size} rows held out
- Masking: {cfg.mlm_probability:.0%} of tokens selected; {cfg.mask_replace_prob:.0%} [MASK], \
{cfg.random_replace_prob:.0%} random{", whole words" if cfg.whole_word_masking else ""}
- Training: {cfg.max_steps} steps, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation, \
AdamW at {cfg.learning_rate:g} with linear warmup and decay, seed {cfg.seed}, on {result.device} \
({result.mixed_precision} mixed precision), {result.seconds:.0f} s

## Held-out evaluation

```
{result.table()}
```

## Use

```python
from transformers import BertForMaskedLM, BertTokenizer
model = BertForMaskedLM.from_pretrained("{cfg.model_dir}")
tokenizer = BertTokenizer.from_pretrained("{cfg.model_dir}")
```
"""

"""What a run reports: the before/after table, and the model card saved with the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import TextSource
from .training import EvalMetrics


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
    processes: int = 1
    main_process: bool = True  # False in the other processes of a multi-process run: they write nothing

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


def model_card(cfg: TrainConfig, result: RunResult) -> str:
    source = TextSource.from_config(cfg).describe()
    return f"""# Fine-tuned masked-language model

Written by `mlm_helpers` (bert-mlm-finetuning).

- Base model: `{cfg.model}`
- Data: {source}, {cfg.packing} examples of {cfg.max_length} tokens, {cfg.eval_size} rows held out
- Masking: {cfg.mlm_probability:.0%} of tokens selected; {cfg.mask_replace_prob:.0%} [MASK], \
{cfg.random_replace_prob:.0%} random{", whole words" if cfg.whole_word_masking else ""}
- Training: {cfg.max_steps} steps, batch {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation \
x {result.processes} process(es), \
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

import json
import math
import time

import pytest
import torch
from transformers import BertForMaskedLM, BertTokenizer

from mlm_helpers.config import make_config
from mlm_helpers.data.masking import MaskedLanguageModelingDataset, collate
from mlm_helpers.mlm_head import SparseMaskedLM
from mlm_helpers.predict.predictor import Predictor
from mlm_helpers.scratch import train_wordpiece_tokenizer
from mlm_helpers.training.distributed import make_accelerator
from mlm_helpers.training.loop import TrainArgs, build_optimizer, build_schedule, train_loop
from mlm_helpers.training.run import evaluate_config, train

from .conftest import sample_lines, tiny_bert


def test_schedule_warms_up_linearly_then_decays_to_zero(model):
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.01)
    schedule = build_schedule(optimizer, warmup_steps=10, max_steps=110)
    rates = []
    for _ in range(110):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.0
    assert rates[5] == pytest.approx(5e-4)
    assert rates[10] == pytest.approx(1e-3)
    assert rates[60] == pytest.approx(5e-4)
    assert schedule.get_last_lr()[0] == 0.0


def test_no_weight_decay_on_biases_and_layernorm(model):
    optimizer = build_optimizer(model, learning_rate=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = [names[i] for i in decayed]
    assert decayed_names and all(n.endswith("weight") and "LayerNorm" not in n for n in decayed_names)
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed_names
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_sparse_head_loss_equals_full_head_loss(tokenizer, model):
    texts = sample_lines(16)
    examples = [tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in texts]
    batch = collate(
        list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.3, seed=5)),
        tokenizer.pad_token_id,
    )
    full = model(**batch).loss
    sparse = SparseMaskedLM(model)(**batch)
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    sparse.backward()
    sparse_grad = model.bert.encoder.layer[0].attention.self.query.weight.grad.clone()
    model.zero_grad()
    model(**batch).loss.backward()
    assert torch.allclose(
        sparse_grad, model.bert.encoder.layer[0].attention.self.query.weight.grad, atol=1e-6
    )


def test_under_cpu_autocast_the_head_runs_in_fp32_and_the_loop_runs_backward_outside_it(tokenizer, model):
    examples = [tokenizer(t, truncation=True, max_length=32)["input_ids"] for t in sample_lines(16)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.3, seed=5))
    batch = collate(masked, tokenizer.pad_token_id)
    module = SparseMaskedLM(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = module.masked_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])
        hidden = model.bert(batch["input_ids"], batch["attention_mask"])[0][batch["labels"] != -100]
    assert logits.dtype == torch.float32  # not the bf16 that autocast would give the vocabulary product
    assert torch.allclose(logits, model.cls(hidden.float()), atol=1e-5)
    during_backward = []
    weight = model.cls.predictions.transform.dense.weight
    weight.register_hook(lambda grad: during_backward.append(torch.is_autocast_enabled("cpu")))
    optimizer = build_optimizer(module, 1e-3, 0.01)
    args = TrainArgs(max_steps=1, log_every=1, progress=False)
    train_loop(
        module, optimizer, build_schedule(optimizer, 0, 1), iter([batch]), make_accelerator("bf16"), args
    )
    assert during_backward == [False]  # backward ops take their forward ops' precision, not autocast's


def test_trained_tokenizer_has_a_real_vocabulary(tmp_path):
    tokenizer = train_wordpiece_tokenizer(sample_lines(), vocab_size=2000)
    assert 1500 < len(tokenizer) <= 2000
    tokenizer.save_pretrained(tmp_path)
    reloaded = BertTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer)
    text = "She poured a cup of tea."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]


def small_config(tmp_path, text_file, **changes):
    values = dict(
        model="scratch:tiny",
        data_files=[str(text_file)],
        max_length=32,
        batch_size=8,
        max_steps=30,
        learning_rate=2e-3,
        eval_size=60,
        eval_every=10,
        log_every=5,
        shuffle_buffer=100,
        output_dir=str(tmp_path / "outputs"),
        model_dir=str(tmp_path / "bert_finetuned"),
        progress=False,
        # fp32 on every machine: "auto" picks bf16 on CPUs with AVX512-BF16, and the comparisons between
        # runs in these tests hold to float32 rounding.
        mixed_precision="no",
        pseudo_perplexity=8,  # the first 8 held-out texts: a few hundred small forward passes
    )
    values.update(changes)
    return make_config(**values)


def test_end_to_end_train_save_reload(tmp_path, text_file):
    cfg = small_config(tmp_path, text_file)
    result = train(cfg)
    assert result.after.loss < result.before.loss - 1.0
    assert result.after.top5 > result.before.top5
    # reports
    records = [json.loads(line) for line in (tmp_path / "outputs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 10, 20, 30]
    assert all(math.isfinite(r["loss"]) and r["tokens_per_second"] > 0 for r in records if "loss" in r)
    assert (tmp_path / "outputs" / "loss.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "outputs" / "summary.json").read_text())
    assert summary["after"]["loss"] == pytest.approx(result.after.loss)
    # the pseudo-perplexity of the same 8 held-out sentences at every evaluation, falling as it trains
    pppl = [r["eval_pseudo_perplexity"] for r in records if "eval_loss" in r]
    assert pppl[0] == result.before.pseudo_perplexity and pppl[-1] == result.after.pseudo_perplexity
    assert result.after.pseudo_perplexity < 0.8 * result.before.pseudo_perplexity
    assert [summary[when]["pseudo_perplexity"] for when in ("before", "after")] == [pppl[0], pppl[-1]]
    assert "pseudo-perplexity" in result.table()
    # the saved folder is a plain BERT that loads with the original project's calls
    saved = tmp_path / "bert_finetuned"
    assert (saved / "model.safetensors").is_file() and (saved / "README.md").is_file()
    assert not list(tmp_path.glob(".bert_finetuned*"))  # no staging folder left behind
    model = BertForMaskedLM.from_pretrained(saved)
    tokenizer = BertTokenizer.from_pretrained(saved)
    assert model.config.vocab_size == len(tokenizer) > 100
    card = (saved / "README.md").read_text()
    assert "held-out pseudo-perplexity after training" in card and "held-out pseudo-perplexity before" in card
    # and evaluates to exactly the metrics the run reported
    again = evaluate_config(cfg.replace(model=str(saved)))
    assert again.loss == pytest.approx(result.after.loss, rel=1e-6)
    assert again.top1 == result.after.top1
    assert again.pseudo_perplexity == pytest.approx(result.after.pseudo_perplexity, rel=1e-6)
    # which is Salazar et al.'s corpus figure over the first 8 held-out lines, scored by Predictor.score
    scores = Predictor.load(saved, device="cpu").score(text_file.read_text().splitlines()[:8])
    direct = math.exp(-math.fsum(s.pll for s in scores) / sum(s.token_count for s in scores))
    assert again.pseudo_perplexity == pytest.approx(direct, rel=1e-9)


def test_same_seed_gives_the_same_weights_bit_for_bit_with_or_without_the_pseudo_perplexity(
    tmp_path, text_file, local_model
):
    def weights(folder, seed, pseudo_perplexity=8):
        # A model with dropout, evaluated at step 4: scoring must leave its training mode on and the
        # random numbers as they were.
        cfg = small_config(tmp_path / folder, text_file, model=str(local_model), max_steps=8, eval_every=4,
                           seed=seed, pseudo_perplexity=pseudo_perplexity)  # fmt: skip
        train(cfg)
        return BertForMaskedLM.from_pretrained(tmp_path / folder / "bert_finetuned").state_dict()

    a, b, c = weights("a", 1), weights("b", 1, pseudo_perplexity=0), weights("c", 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # 0 turns it off: null in summary.json and metrics.jsonl, no row in the table or the model card
    summary = json.loads((tmp_path / "b" / "outputs" / "summary.json").read_text())
    assert summary["before"]["pseudo_perplexity"] is None and summary["after"]["pseudo_perplexity"] is None
    lines = (tmp_path / "b" / "outputs" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if "eval_loss" in r]
    assert len(evals) == 3 and all(r["eval_pseudo_perplexity"] is None for r in evals)
    assert "pseudo-perplexity" not in (tmp_path / "b" / "bert_finetuned" / "README.md").read_text()


def test_gradient_accumulation_matches_the_larger_batch(tokenizer):
    examples = [tokenizer(t, truncation=True, max_length=24)["input_ids"] for t in sample_lines(48)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.2, seed=3))

    def run(batch_size, accumulation):
        model = SparseMaskedLM(tiny_bert(len(tokenizer)))
        optimizer = build_optimizer(model, 1e-3, 0.01)
        schedule = build_schedule(optimizer, 0, 3)
        batches = iter(
            [
                collate(masked[i : i + batch_size], tokenizer.pad_token_id)
                for i in range(0, len(masked), batch_size)
            ]
        )
        args = TrainArgs(max_steps=3, accumulation=accumulation, progress=False)
        train_loop(model, optimizer, schedule, batches, make_accelerator("no"), args)
        return model.state_dict()

    big, accumulated, other = run(16, 1), run(4, 4), run(16, 1)
    assert all(torch.equal(big[k], other[k]) for k in big)
    assert all(torch.allclose(big[k], accumulated[k], atol=1e-5) for k in big)
    moved = tiny_bert(len(tokenizer)).state_dict()
    assert not torch.allclose(
        big["model.bert.encoder.layer.0.attention.self.query.weight"],
        moved["bert.encoder.layer.0.attention.self.query.weight"],
    )


def test_tiny_bert_helper_is_deterministic():
    assert torch.equal(
        tiny_bert(50).cls.predictions.decoder.weight, tiny_bert(50).cls.predictions.decoder.weight
    )


def test_the_progress_bar_in_a_log_file_writes_a_line_now_and_then_not_every_step(tokenizer, capsys):
    examples = [tokenizer(t, truncation=True, max_length=16)["input_ids"] for t in sample_lines(80)]
    masked = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.2, seed=5))
    batches = iter([collate(masked[i : i + 2], tokenizer.pad_token_id) for i in range(0, 80, 2)])
    model = SparseMaskedLM(tiny_bert(len(tokenizer)))
    model.register_forward_pre_hook(lambda *_: time.sleep(0.03))  # 40 steps of 30 ms: a bar would redraw
    optimizer = build_optimizer(model, 1e-3, 0.01)
    args = TrainArgs(max_steps=40, log_every=5, progress=True)
    train_loop(model, optimizer, build_schedule(optimizer, 0, 40), batches, make_accelerator("no"), args)
    shown = capsys.readouterr().err  # what a log file gets: standard error is no terminal here
    assert "training" in shown and "40/40" in shown
    assert shown.count("\r") <= 3, shown  # its first and last states, not one line per step

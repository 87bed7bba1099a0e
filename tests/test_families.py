"""The family matrix: every family the registry knows, on a tiny random model with its kind of tokenizer.

For each family: the masked-positions-only head gives the model's own loss and gradients, the FLOPs
count is what torch counts, FSDP finds the encoder's layers, and the command line trains (whole-word
masking, a checkpoint, a resume), predicts, and saves a folder that plain transformers loads.
"""

import json

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mlm_helpers.config import ConfigError, make_config
from mlm_helpers.families import FAMILIES as REGISTRY
from mlm_helpers.families import encoder_layers, family_of, word_marker
from mlm_helpers.mlm_head import SparseMaskedLM
from mlm_helpers.modeling import ModelLoadError, check_max_length, check_trainable, family_note, load_model
from mlm_helpers.scratch import train_bpe_tokenizer
from mlm_helpers.training.flops import training_flops_per_token
from mlm_helpers.training.run import train

from .conftest import sample_lines
from .families import FAMILIES, family_config, family_model, family_tokenizer, save_family
from .test_cli import run_in_process


def labelled_batch(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab_size, (2, 12), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.4, ids, torch.full_like(ids, -100))
    return ids, labels


def test_every_tested_family_is_in_the_registry():
    assert set(FAMILIES) <= set(REGISTRY)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_only_head_gives_the_models_own_loss_and_gradients(family):
    ids, labels = labelled_batch(len(family_tokenizer(family)))
    mask = torch.ones_like(ids)
    full, sparse = family_model(family).train(), family_model(family).train()
    wrapped = SparseMaskedLM(sparse)
    assert wrapped.sparse

    expected = full(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()
    loss = wrapped(ids, mask, labels)
    loss.backward()

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    grads = dict(sparse.named_parameters())
    for name, param in full.named_parameters():
        if param.grad is not None:
            assert torch.allclose(grads[name].grad, param.grad, atol=1e-6), name


@pytest.mark.parametrize("family", FAMILIES)
def test_flops_per_token_are_what_torch_counts_in_a_training_step(family):
    model = family_model(family).train()
    model.set_attn_implementation("eager")  # the counter sees each attention matmul (SDPA's CPU kernel: none)
    ids, labels = labelled_batch(model.config.vocab_size, seed=1)
    with FlopCounterMode(display=False) as counter:
        SparseMaskedLM(model)(ids, torch.ones_like(ids), labels).backward()
    fraction = (labels != -100).sum().item() / ids.numel()
    expected = ids.numel() * training_flops_per_token(model.config, seq_len=12, masked_fraction=fraction)
    assert counter.get_total_flops() == pytest.approx(expected, rel=1e-9)


def test_debertas_relative_attention_is_counted_but_its_per_batch_projection_is_not():
    changes = dict(relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"])
    model = family_model("deberta-v2", **changes).train()
    ids, labels = labelled_batch(model.config.vocab_size, seed=2)
    with FlopCounterMode(display=False) as counter:
        SparseMaskedLM(model)(ids, torch.ones_like(ids), labels).backward()
    fraction = (labels != -100).sum().item() / ids.numel()
    counted = ids.numel() * training_flops_per_token(model.config, seq_len=12, masked_fraction=fraction)
    plain = ids.numel() * training_flops_per_token(family_config("deberta-v2"), 12, fraction)
    assert counted > plain
    # Once per batch, per layer: the keys' and the queries' projections of 2 x 8 relative positions.
    projections = 6 * 2 * 2 * (2 * 8) * 32 * 32
    assert counter.get_total_flops() - counted == pytest.approx(projections, rel=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp_shards_the_encoder_layers_and_never_the_tied_embeddings(family):
    model = family_model(family)
    layers = encoder_layers(model)
    shared = family == "albert"  # ALBERT runs one group of layers again and again: one unit
    assert len(layers) == (1 if shared else 2)
    units = SparseMaskedLM(model)._no_split_modules
    assert units == sorted({type(layer).__name__ for layer in layers})
    embeddings = type(model.get_input_embeddings()).__name__
    assert not any("Embedding" in unit for unit in units), (units, embeddings)


def test_an_unknown_family_trains_with_its_full_head_and_says_so():
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = transformers.MPNetConfig(vocab_size=120, max_position_embeddings=40, **sizes)
    model = AutoModelForMaskedLM.from_config(config).eval()
    assert family_of(config) is None and training_flops_per_token(config, 16, 0.15) is None
    wrapped = SparseMaskedLM(model)
    assert not wrapped.sparse
    ids, labels = labelled_batch(120)
    expected = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    assert wrapped(ids, torch.ones_like(ids), labels).item() == pytest.approx(expected.item(), rel=1e-5)
    check_trainable(model, gradient_checkpointing=False)
    notice = family_note(config)
    assert "'mpnet' is not a family this package knows" in notice and "full vocabulary head" in notice
    assert len(notice.strip().splitlines()) == 1


def test_roberta_positions_start_after_the_padding_id():
    config = transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1)  # as roberta-base's
    check_max_length(config, 512)
    with pytest.raises(ConfigError, match="limit of 512 tokens"):
        check_max_length(config, 514)
    check_max_length(transformers.BertConfig(max_position_embeddings=512), 512)


def test_a_model_that_cannot_checkpoint_activations_is_refused_before_training():
    with pytest.raises(ConfigError, match="does not support --gradient-checkpointing"):
        check_trainable(family_model("albert"), gradient_checkpointing=True)
    check_trainable(family_model("bert"), gradient_checkpointing=True)


def test_an_electra_discriminator_is_refused_and_the_generator_named(tmp_path):
    config = family_config("electra")
    transformers.ElectraForPreTraining(config).save_pretrained(tmp_path / "discriminator")
    family_tokenizer("electra").save_pretrained(tmp_path / "discriminator")
    with pytest.raises(ModelLoadError, match="ElectraForPreTraining, not a masked-language model") as error:
        load_model(tmp_path / "discriminator")
    assert "google/electra-base-generator" in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_checkpoint_resume_predict_reload_on_the_command_line(family, tmp_path, text_file, capsys):
    base = save_family(family, tmp_path / "base")
    saved, out = tmp_path / "finetuned", tmp_path / "out"
    run = ["train", "--model", str(base), "--data-files", str(text_file), "--max-length", "32"]
    run += ["--batch-size", "4", "--eval-size", "16", "--whole-word-masking", "--checkpoint-every", "2"]
    run += ["--mixed-precision", "no", "--output-dir", str(out), "--model-dir", str(saved), "--no-progress"]
    first = run_in_process(capsys, *run, "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    assert "is not a family" not in first.stdout  # the masked-only head, no fallback
    resumed = run_in_process(capsys, *run, "--max-steps", "4", "--resume", "--force-resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from" in resumed.stdout + resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4

    data = ["--data-files", str(text_file), "--max-length", "32", "--eval-size", "16", "--whole-word-masking"]
    evaluated = run_in_process(capsys, "evaluate", "--model", str(saved), *data, "--mixed-precision", "no")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] == pytest.approx(summary["after"]["loss"], rel=1e-5)

    mask = family_tokenizer(family).mask_token
    text = f"The old {mask} was there."
    predicted = run_in_process(capsys, "predict", "--model", str(saved), "--json", text)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["masks"][0]) == 5

    model, info = AutoModelForMaskedLM.from_pretrained(saved, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == type(family_model(family)).__name__
    tokenizer = AutoTokenizer.from_pretrained(saved)
    assert tokenizer.get_vocab() == family_tokenizer(family).get_vocab()
    assert "AutoModelForMaskedLM.from_pretrained" in (saved / "README.md").read_text()


def test_older_hub_layouts_load_with_a_fast_tokenizer_built_from_their_vocabulary(tmp_path):
    # bert-base-uncased as first published: config.json, vocab.txt and a tensor-only pytorch_model.bin.
    for family, files in (("bert", ("vocab.txt",)), ("roberta", ("vocab.json", "merges.txt"))):
        folder, model, tokenizer = tmp_path / family, family_model(family), family_tokenizer(family)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        tokenizer.save_pretrained(tmp_path / "full")
        spec = json.loads((tmp_path / "full" / "tokenizer.json").read_text())["model"]
        if family == "bert":
            (folder / "vocab.txt").write_text("\n".join(sorted(spec["vocab"], key=spec["vocab"].get)) + "\n")
        else:
            (folder / "vocab.json").write_text(json.dumps(spec["vocab"]))
            merges = [" ".join(pair) for pair in spec["merges"]]
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        written = sorted(p.name for p in folder.iterdir())
        assert written == sorted(["config.json", "pytorch_model.bin", *files])

        loaded, reloaded = load_model(folder)
        assert reloaded.is_fast
        text = "The unearthly quiet of the harbour, at dawn."
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_sentencepiece_model_without_tokenizer_json_names_the_package_it_needs(tmp_path):
    family_model("albert").save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"\x00not read here")
    message = r"SentencePiece model \(spiece.model\).*pip install sentencepiece"
    with pytest.raises(ModelLoadError, match=message):
        load_model(tmp_path)


def test_the_quick_preset_trains_a_scratch_roberta_with_its_byte_level_bpe(tmp_path):
    paths = dict(output_dir=str(tmp_path / "out"), model_dir=str(tmp_path / "model"))
    small = dict(
        max_steps=8, batch_size=8, eval_size=64, eval_every=0, learning_rate=3e-3, mixed_precision="no"
    )
    cfg = make_config("quick", model="scratch:roberta-tiny", **small, **paths)
    result = train(cfg)
    assert result.after.loss < result.before.loss
    model = AutoModelForMaskedLM.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert type(model).__name__ == "RobertaForMaskedLM" and model.config.max_position_embeddings == 514
    assert tokenizer.mask_token == "<mask>" and word_marker(tokenizer) == ("starts", "Ġ")
    assert tokenizer.decode(tokenizer("It was a quiet morning.")["input_ids"], skip_special_tokens=True) == (
        "It was a quiet morning."
    )


def test_the_byte_level_bpe_vocabulary_is_the_same_for_the_same_text():
    first, second = (train_bpe_tokenizer(sample_lines(1500), vocab_size=800) for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert len(first) == 800

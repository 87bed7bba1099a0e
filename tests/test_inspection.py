import shlex

import pytest
import torch

from mlm_helpers import MaskedLanguageModelingDataset, MaskingRule, collate, mask_text
from mlm_helpers.config import ConfigError, make_config
from mlm_helpers.data.masking import IGNORE_INDEX
from mlm_helpers.flags import build_parser, config_from_args
from mlm_helpers.notebook.inspection import (
    KEPT,
    MASKED,
    RANDOM,
    UNSELECTED,
    cli_command,
    environment_table,
    masking_summary,
    masking_table,
    outcome_masks,
    padding_vs_packing,
    token_outcomes,
    tokenization_table,
)

from .conftest import sample_lines

X = IGNORE_INDEX


def test_token_outcomes_reads_mask_random_kept_and_unselected():
    mask_id = 4
    ids = torch.tensor([2, 4, 50, 60, 70, 3])
    labels = torch.tensor([X, 10, 51, 60, X, X])
    assert token_outcomes(ids, labels, mask_id) == [UNSELECTED, MASKED, RANDOM, KEPT, UNSELECTED, UNSELECTED]


def test_outcome_masks_partition_a_batch():
    ids = torch.tensor([[4, 4, 9, 7], [8, 4, 0, 0]])
    labels = torch.tensor([[11, 12, 13, 7], [X, 14, X, X]])
    masks = outcome_masks(ids, labels, mask_token_id=4)
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    assert counts == {MASKED: 3, RANDOM: 1, KEPT: 1, UNSELECTED: 3}
    assert int(sum(mask.long() for mask in masks.values()).max()) == 1  # each token has one outcome


def test_masking_table_matches_mask_text(tokenizer):
    text = "The old farmer walked his dog to the market and came home with bread."
    table = masking_table(text, tokenizer, mlm_probability=0.5, seeds=range(6))
    assert list(table.index) == tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert list(table.columns) == [f"seed {s}" for s in range(6)]
    seen = set()
    for seed in range(6):
        ids, labels = mask_text(text, tokenizer, mlm_probability=0.5, seed=seed)
        column = list(table[f"seed {seed}"])
        for cell, shown, label in zip(column, ids.tolist(), labels.tolist()):
            if label == X:
                assert cell == ""
            elif shown == tokenizer.mask_token_id:
                assert cell == "[MASK]"
            elif shown == label:
                assert cell == "kept"
            else:
                assert cell == "random: " + tokenizer.convert_ids_to_tokens(shown)
            seen.add(cell.split(":")[0])
    assert {"", "[MASK]", "random", "kept"} <= seen  # at 50% over six draws, every outcome shows up
    assert table.iloc[0].tolist() == [""] * 6  # [CLS] is never selected


def test_masking_summary_counts_against_eligible_and_selected_tokens(tokenizer):
    pad, cls, sep, mask = (tokenizer.convert_tokens_to_ids(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
    word, other = tokenizer.convert_tokens_to_ids(["the", "and"])
    # Row 0: [CLS] + 8 words + [SEP]; row 1: [CLS] + 2 words + [SEP] + 6 padding. 10 eligible words.
    ids = torch.tensor(
        [
            [cls, mask, mask, mask, other, word, word, word, word, sep],
            [cls, mask, word, sep, pad, pad, pad, pad, pad, pad],
        ]
    )
    labels = torch.full_like(ids, X)
    labels[0, 1:6] = word  # 3 [MASK], 1 random ("and" shown for "the"), 1 kept
    labels[1, 1] = word  # 1 [MASK]
    attention = (ids != pad).long()
    table = masking_summary(
        {"input_ids": ids, "labels": labels, "attention_mask": attention}, tokenizer, MaskingRule()
    )
    assert table["tokens"].tolist() == [6, 4, 1, 1]
    assert table["out of"].tolist() == [10, 6, 6, 6]
    assert table["observed (%)"].tolist() == [60.0, 66.7, 16.7, 16.7]
    assert table["rule (%)"].tolist() == [15.0, 80.0, 10.0, 10.0]


def test_masking_summary_of_a_real_batch_follows_the_rule(tokenizer):
    examples = [tokenizer(t)["input_ids"] for t in sample_lines(400)]
    dataset = MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.15, seed=3)
    table = masking_summary(collate(list(dataset), tokenizer.pad_token_id), tokenizer, dataset.rule)
    observed = table["observed (%)"].tolist()
    assert observed[0] == pytest.approx(15.0, abs=1.5)
    assert observed[1] == pytest.approx(80.0, abs=4.0)
    assert observed[2] == pytest.approx(10.0, abs=3.0)
    assert observed[3] == pytest.approx(10.0, abs=3.0)


def test_tokenization_table_lists_pieces_and_counts(tokenizer):
    texts = ["The bakery stood at the bottom.", "Grandfather"]
    table = tokenization_table(texts, tokenizer)
    assert table["text"].tolist() == texts
    assert table["word pieces"][0].split() == tokenizer.tokenize(texts[0])
    assert table["tokens"].tolist() == [len(tokenizer.tokenize(t)) for t in texts]


def test_padding_vs_packing_counts_slots_padding_and_lost_text(tokenizer):
    assert tokenizer.tokenize("the the") == ["the", "the"]  # one token per word below
    texts = ["the " * n for n in (3, 5, 10, 1)]  # 19 text tokens; the 10-token row is cut to 6
    table = padding_vs_packing(texts, tokenizer, max_length=8, batch_size=2)
    pad_all, per_batch, packed = (table.loc[name] for name in table.index)
    # Examples of 5, 7, 8 and 3 ids ([CLS] and [SEP] included): 23 ids.
    assert (pad_all["examples"], pad_all["token slots"], pad_all["text tokens"]) == (4, 32, 15)
    assert pad_all["padding (%)"] == round(100 * 9 / 32, 1)
    assert pad_all["text lost (%)"] == round(100 * 4 / 19, 1)
    assert per_batch["token slots"] == 2 * 7 + 2 * 8
    assert per_batch["padding (%)"] == round(100 * 7 / 30, 1)
    # Packed: 19 tokens make 3 blocks of 6 + [CLS] + [SEP]; one token is left over.
    assert (packed["examples"], packed["token slots"], packed["text tokens"]) == (3, 24, 18)
    assert packed["padding (%)"] == 0.0
    assert packed["text lost (%)"] == round(100 * 1 / 19, 1)


def test_environment_table_names_the_device_and_versions():
    table = environment_table()
    assert table.loc["torch", "value"] == torch.__version__
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert table.loc["device", "value"].startswith("CPU")
    assert {"python", "transformers", "datasets", "accelerate"} <= set(table.index)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("quick", {}),
        ("quick", {"max_steps": 50}),
        ("quick", {"max_steps": 7, "progress": False, "learning_rate": 3e-4, "output_dir": "my outputs"}),
        (
            None,
            {"model": "bert-base-uncased", "batch_size": 32, "max_length": 128, "whole_word_masking": True},
        ),
        (None, {"dataset": "wikitext", "dataset_config": "wikitext-2-raw-v1", "packing": "sentence"}),
    ],
)
def test_cli_command_builds_the_same_config(preset, overrides):
    cfg = make_config(preset, **overrides)
    command = cli_command(cfg, preset)
    words = shlex.split(command)
    assert words[:4] == ["python", "-m", "mlm_helpers", "train"]
    assert config_from_args(build_parser().parse_args(words[3:])) == cfg


def test_cli_command_writes_only_what_differs(text_file):
    assert cli_command(make_config("quick", max_steps=50), "quick") == (
        "python -m mlm_helpers train --preset quick --max-steps 50"
    )
    cfg = make_config(data_files=[str(text_file)], max_steps=20)
    assert cli_command(cfg) == f"python -m mlm_helpers train --data-files {text_file} --max-steps 20"
    with pytest.raises(ConfigError, match="data_files=None"):
        cli_command(make_config("quick", data_files=None), "quick")

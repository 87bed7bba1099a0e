import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlm_helpers.data.draws import key_of
from mlm_helpers.data.examples import encode_ids, make_examples, split_word_marks
from mlm_helpers.data.masking import (
    IGNORE_INDEX,
    MaskedLanguageModelingDataset,
    MaskingRule,
    Vocabulary,
    collate,
    example_generator,
    mask_text,
    mask_tokens,
)

from .conftest import sample_lines
from .test_draws import reference_uniform


def make_vocab(size=50, special=(0, 1, 2, 3, 4)):
    is_special = torch.zeros(size, dtype=torch.bool)
    is_special[list(special)] = True
    return Vocabulary(4, 0, is_special, torch.nonzero(~is_special).flatten())


VOCAB = make_vocab()
SPECIAL = VOCAB.special
CONTINUES = 40  # in these made-up ids, 40 to 49 are pieces that continue a word


def starts_of(ids: torch.Tensor) -> torch.Tensor:
    return ids < CONTINUES


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(0, 49), min_size=1, max_size=300),
    seed=st.integers(0, 2**32),
    p=st.floats(0.01, 0.99),
    mask_p=st.floats(0.0, 1.0),
    random_share=st.floats(0.0, 1.0),
    whole_word=st.booleans(),
)
def test_invariants_hold_for_any_input(ids, seed, p, mask_p, random_share, whole_word):
    rule = MaskingRule(p, mask_p, (1 - mask_p) * random_share, whole_word)
    vocab = make_vocab()
    original = torch.tensor(ids)
    masked, labels = mask_tokens(original, vocab, rule, example_generator(seed, 0), starts_of(original))
    selected = labels != IGNORE_INDEX
    # special and padding tokens are never selected, and stay what they were
    assert not selected[vocab.special[original]].any()
    assert torch.equal(masked[vocab.special[original]], original[vocab.special[original]])
    # labels hold the original exactly where selected; unselected tokens are untouched
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(masked[~selected], original[~selected])
    # a changed token is either [MASK] or a random non-special token
    changed = masked != original
    assert not vocab.special[masked[changed & (masked != vocab.mask_token_id)]].any()
    # the same seed and position give the same masks
    again = mask_tokens(original, vocab, rule, example_generator(seed, 0), starts_of(original))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)


def reference_mask(ids: list[int], example: int, key: int, vocab: Vocabulary, rule: MaskingRule):
    """The masking rule token by token, from the draws' own definition: what mask_array must give.
    Token t's draws are numbers 3u (u: t, or t's word under a whole-word rule), 3t + 1 and 3t + 2."""
    special = vocab.special[[i if i >= 0 else ~i for i in ids]].tolist()
    random_ids = vocab.random_ids.tolist()
    masked, labels, word = [], [], -1
    for t, marked in enumerate(ids):
        plain = marked if marked >= 0 else ~marked
        if t == 0 or special[t] or special[t - 1] or marked >= 0:  # a word starts here
            word += 1
        unit = word if rule.whole_word else t
        if special[t] or reference_uniform(key, example, 3 * unit) >= rule.mlm_probability:
            masked.append(plain)
            labels.append(IGNORE_INDEX)
            continue
        labels.append(plain)
        action = reference_uniform(key, example, 3 * t + 1)
        if action < rule.mask_replace_prob:
            masked.append(vocab.mask_token_id)
        elif action < rule.mask_replace_prob + rule.random_replace_prob:
            masked.append(random_ids[int(reference_uniform(key, example, 3 * t + 2) * len(random_ids))])
        else:
            masked.append(plain)
    return masked, labels


def marked_ids(length: int, generator: torch.Generator) -> list[int]:
    """Made-up ids of VOCAB with word marks (~id continues a word), specials among them."""
    ids = torch.randint(0, 50, (length,), generator=generator).tolist()
    continues = torch.rand(length, generator=generator) < 0.4
    return [~i if c and i > 4 else i for i, c in zip(ids, continues.tolist())]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    position=st.integers(0, 2**40),
    world=st.sampled_from([(0, 1), (1, 2), (3, 4)]),
    p=st.floats(0.05, 0.95),
    mask_p=st.floats(0.0, 1.0),
    random_share=st.floats(0.0, 1.0),
    whole_word=st.booleans(),
)
def test_masks_match_a_token_by_token_reference(seed, lengths, position, world, p, mask_p, random_share,
                                                whole_word):  # fmt: skip
    # A batch of examples of several lengths (padded to the longest), of any rank of any world size:
    # each row is what the reference gives that example alone, as example position * world + rank.
    rule = MaskingRule(p, mask_p, (1 - mask_p) * random_share, whole_word)
    generator = torch.Generator().manual_seed(seed)
    examples = [marked_ids(n, generator) for n in lengths]
    if not whole_word:
        examples = [[i if i >= 0 else ~i for i in ids] for ids in examples]
    rank, world_size = world
    dataset = MaskedLanguageModelingDataset(examples, vocab=VOCAB, rule=rule, seed=seed, rank=rank,
                                            world_size=world_size)  # fmt: skip
    batch = dataset.mask_batch(examples, position)
    assert batch["input_ids"].shape == (len(lengths), max(lengths))
    for row, ids in enumerate(examples):
        example = (position + row) * world_size + rank
        masked, labels = reference_mask(ids, example, key_of(seed), VOCAB, rule)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == masked
        assert batch["labels"][row, :n].tolist() == labels
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["input_ids"][row, n:] == VOCAB.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        alone = dataset.mask_example(ids, position + row)
        assert alone["input_ids"].tolist() == masked and alone["labels"].tolist() == labels


@pytest.mark.parametrize("whole_word", [False, True])
@pytest.mark.parametrize("packing", ["packed", "sentence"])
def test_a_batch_masks_each_example_as_iterating_masks_it_alone(tokenizer, whole_word, packing):
    # The pipeline masks a batch at a time, a plain iteration one example at a time: the same examples
    # get the same masks either way, padded ("sentence") or not.
    examples = list(make_examples(sample_lines(400), tokenizer, 32, packing, word_marks=whole_word))
    rule = MaskingRule(0.3, whole_word=whole_word)
    dataset = MaskedLanguageModelingDataset(examples, tokenizer, rule=rule, seed=5, start=7)
    alone = list(dataset)
    batches = list(dataset.batches(16, tokenizer.pad_token_id))
    assert sum(len(batch["input_ids"]) for batch in batches) == len(examples) > 16
    for number, batch in enumerate(batches):
        expected = collate(alone[number * 16 : (number + 1) * 16], tokenizer.pad_token_id)
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[name], expected[name]) for name in expected)


def test_mask_text_with_a_seed_masks_as_the_datasets_first_example(tokenizer):
    text = sample_lines(1)[0]
    ids, labels = mask_text(text, tokenizer, 0.3, seed=5)
    dataset = MaskedLanguageModelingDataset([tokenizer(text)["input_ids"]], tokenizer, 0.3, seed=5)
    first = next(iter(dataset))
    assert torch.equal(first["input_ids"], ids) and torch.equal(first["labels"], labels)


def within(observed: int, trials: int, share: float, sds: float = 5.0) -> bool:
    """Whether `observed` successes of `trials` fit a binomial share: within `sds` standard deviations
    (a wrong share by 1% of 400,000 tokens is some 30 of them)."""
    return abs(observed - trials * share) <= sds * math.sqrt(trials * share * (1 - share))


@pytest.mark.parametrize("whole_word", [False, True])
def test_rates_match_the_bert_rule_over_many_tokens(whole_word):
    # 3,000 examples of 128 made-up ids through the batched path, every tenth id padding, a word of
    # one to three pieces at a time: 15% of the words are selected, and 80/10/10 of their pieces.
    generator = torch.Generator().manual_seed(1)
    examples = []
    for _ in range(3000):
        ids = torch.randint(5, 50, (128,), generator=generator)
        ids[::10] = 0
        examples.append([~i if n % 3 > 0 and i >= 5 else i for n, i in enumerate(ids.tolist())])
    rule = MaskingRule(whole_word=whole_word)
    if not whole_word:
        examples = [[i if i >= 0 else ~i for i in ids] for ids in examples]
    batches = list(MaskedLanguageModelingDataset(examples, vocab=VOCAB, rule=rule, seed=7).batches(256))
    masked, labels = (torch.cat([batch[name] for batch in batches]) for name in ("input_ids", "labels"))
    plain = torch.tensor([[i if i >= 0 else ~i for i in ids] for ids in examples])
    selectable = ~SPECIAL[plain]
    selected = labels != IGNORE_INDEX
    assert not selected[~selectable].any() and torch.equal(masked[~selectable], plain[~selectable])
    if whole_word:  # one draw per word: a word is a start and the continuations after it
        starts = torch.tensor([[i >= 0 for i in ids] for ids in examples]) & selectable
        assert within(int((selected & starts).sum()), int(starts.sum()), 0.15)
    else:
        assert within(int(selected.sum()), int(selectable.sum()), 0.15)
    n = int(selected.sum())
    became_mask = (masked == VOCAB.mask_token_id) & selected
    became_other = selected & ~became_mask & (masked != plain)
    # a random draw is one of 45 ids and can pick the original token: 1/45 of the random share
    assert within(int(became_mask.sum()), n, 0.8)
    assert within(int(became_other.sum()), n, 0.1 * 44 / 45)
    assert within(int((selected & (masked == plain)).sum()), n, 0.1 + 0.1 / 45)
    # random picks are ids that are not special, each of the 45 about equally often
    picks = masked[became_other]
    assert not SPECIAL[picks].any()
    counts = torch.bincount(picks, minlength=50)[5:]
    assert all(within(int(c), len(picks), 1 / 45) for c in counts)


def test_configurable_probabilities_are_used():
    ids = torch.randint(5, 50, (200_000,), generator=torch.Generator().manual_seed(2))
    masked, labels = mask_tokens(ids, VOCAB, MaskingRule(0.4, 1.0, 0.0), example_generator(0, 0))
    selected = labels != IGNORE_INDEX
    assert abs(selected.float().mean() - 0.4) < 0.005
    assert (masked[selected] == 4).all()


def test_rule_refuses_impossible_probabilities():
    with pytest.raises(ValueError, match="mlm_probability"):
        MaskingRule(mlm_probability=1.5)
    with pytest.raises(ValueError, match="together at most 1"):
        MaskingRule(mask_replace_prob=0.9, random_replace_prob=0.2)


def test_random_replacement_never_draws_special_tokens():
    ids = torch.randint(5, 50, (100_000,), generator=torch.Generator().manual_seed(3))
    masked, labels = mask_tokens(ids, VOCAB, MaskingRule(0.5, 0.0, 1.0), example_generator(0, 0))
    selected = labels != IGNORE_INDEX
    assert not SPECIAL[masked[selected]].any()
    assert (masked[selected] != ids[selected]).float().mean() > 0.9


def test_whole_word_masking_selects_all_pieces_of_a_word_or_none():
    vocab = make_vocab()
    words = torch.Generator().manual_seed(4)
    ids = []
    for _ in range(5000):
        ids.append(int(torch.randint(5, 40, (1,), generator=words)))
        ids += torch.randint(
            40, 50, (int(torch.randint(0, 3, (1,), generator=words)),), generator=words
        ).tolist()
    ids = torch.tensor(ids)
    starts = starts_of(ids)
    _, labels = mask_tokens(ids, vocab, MaskingRule(whole_word=True), example_generator(0, 0), starts)
    selected = labels != IGNORE_INDEX
    word = torch.cumsum(starts.long(), 0)
    for w in torch.unique(word[selected]):
        assert selected[word == w].all()
    assert 0.1 < selected.float().mean() < 0.2


def test_a_word_cut_by_a_block_boundary_starts_a_word_after_the_special_token():
    # [CLS] ing ed | the cat ##s [SEP]: "ing ed" continue a word of the previous block. They are a word
    # of their own, with their own draw, exactly as if they had been marked as a word start.
    ids = torch.tensor([[2, 41, 42, 10, 11, 43, 3]] * 2000)
    marked = starts_of(ids)
    assert not marked[:, 1].any()
    unmarked = marked.clone()
    unmarked[:, 1] = True
    rule = MaskingRule(0.5, whole_word=True)
    as_marked = mask_tokens(ids, VOCAB, rule, example_generator(0, 0), marked)
    as_start = mask_tokens(ids, VOCAB, rule, example_generator(0, 0), unmarked)
    assert all(torch.equal(a, b) for a, b in zip(as_marked, as_start))
    selected = as_marked[1] != IGNORE_INDEX
    assert torch.equal(selected[:, 1], selected[:, 2]) and torch.equal(selected[:, 4], selected[:, 5])
    assert 0.45 < selected[:, 1].float().mean() < 0.55
    # a row that begins inside a word, with no special token before it, starts with a word too
    no_cls = ids[:, 1:]
    _, labels = mask_tokens(no_cls, VOCAB, rule, example_generator(0, 0), starts_of(no_cls))
    selected = labels != IGNORE_INDEX
    assert torch.equal(selected[:, 0], selected[:, 1]) and not torch.equal(selected[:, 0], selected[:, 2])


def test_whole_word_masking_needs_the_word_starts():
    ids = torch.tensor([2, 10, 41, 3])
    with pytest.raises(ValueError, match="word_starts"):
        mask_tokens(ids, VOCAB, MaskingRule(whole_word=True), example_generator(0, 0))
    with pytest.raises(ValueError, match="word_starts"):
        mask_tokens(ids, VOCAB, MaskingRule(whole_word=True), example_generator(0, 0), starts_of(ids[:3]))


def test_dataset_masks_depend_on_seed_and_position_only(tokenizer):
    examples = [tokenizer("The sun rose over the quiet hills and the farm woke up.")["input_ids"]] * 4
    dataset = MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.5, seed=11)
    first, second = list(dataset), list(dataset)
    for a, b in zip(first, second):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    # the same text read at another position gets fresh masks
    assert len({tuple(e["labels"].tolist()) for e in first}) > 1
    # a dataset started at position 2 (a resume) reproduces examples 2 and 3 exactly
    resumed = list(
        MaskedLanguageModelingDataset(examples[2:], tokenizer, mlm_probability=0.5, seed=11, start=2)
    )
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(first[2:], resumed))
    other_seed = list(MaskedLanguageModelingDataset(examples, tokenizer, mlm_probability=0.5, seed=12))
    assert any(not torch.equal(a["labels"], b["labels"]) for a, b in zip(first, other_seed))


def test_vocabulary_from_tokenizer_excludes_specials_from_random_draws(tokenizer):
    vocab = Vocabulary.from_tokenizer(tokenizer)
    assert vocab.special[tokenizer.all_special_ids].all()
    assert not set(vocab.random_ids.tolist()) & set(tokenizer.all_special_ids)


def test_word_starts_from_the_tokenizer_agree_with_wordpiece_marks(tokenizer):
    # Word boundaries come from the tokenizer's word ids; on WordPiece they are exactly its "##" marks.
    marked = [i for ids in encode_ids(sample_lines(300), tokenizer, word_marks=True) for i in ids]
    ids, starts = split_word_marks(marked)
    continues = [token.startswith("##") for token in tokenizer.convert_ids_to_tokens(ids)]
    assert any(continues) and starts == [not c for c in continues]


def test_mask_text_masks_one_sentence(tokenizer):
    ids, labels = mask_text(
        "The quick brown fox jumps over the lazy dog.", tokenizer, mlm_probability=0.5, seed=3
    )
    plain = tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    assert ids.shape == labels.shape == (len(plain),)
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS] and [SEP]
    selected = labels != IGNORE_INDEX
    assert selected.any()
    assert torch.equal(labels[selected], torch.tensor(plain)[selected])


def test_mask_text_draws_a_new_mask_each_call_unless_seeded(tokenizer):
    # The original project's mask_text masked at random: every text of one length got the same
    # positions when a fixed seed was the default (over a book's chunks, one draw repeated).
    text = " ".join(sample_lines(40))
    draws = [mask_text(text, tokenizer)[1] != IGNORE_INDEX for _ in range(20)]
    assert len({tuple(d.tolist()) for d in draws}) == 20
    share = torch.stack(draws).float().mean().item()
    assert 0.13 < share < 0.17  # of every token, special tokens included: 15% of the others
    seeded = [mask_text(text, tokenizer, seed=3)[1] for _ in range(2)]
    assert torch.equal(*seeded)


def test_collate_pads_and_marks_padding():
    a = {"input_ids": torch.tensor([2, 9, 3]), "labels": torch.tensor([-100, 9, -100])}
    b = {"input_ids": torch.tensor([2, 3]), "labels": torch.tensor([-100, -100])}
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[2, 9, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 9, -100], [-100, -100, -100]]

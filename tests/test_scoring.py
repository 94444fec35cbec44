"""Scoring path: batch/padding invariance, truncation inside the text slot, sliced head == full head."""

import numpy as np
import pytest
import torch

from classlm.labels import LabelSet
from classlm.methods import get_method
from classlm.models import Backbone, ModelSource
from classlm.prompts import PromptTemplate
from classlm.scoring import PromptEncoder, last_token_hidden, length_sorted_batches

TEXTS = [
    "Stocks fell sharply on Monday.",
    "The team won the match in the last minute of a long and tense game that nobody will forget.",
    "A new phone was released today.",
    "Great movie!",
    "The quick brown fox jumps over the lazy dog and then runs away into the forest at night.",
]
LABELS = {"World": "world politics", "Sports": "sport", "Business": "business", "Sci/Tech": "science"}


@pytest.fixture()
def backbone(tiny_model, tiny_tokenizer):
    return Backbone(tiny_model, tiny_tokenizer, ModelSource("tiny", "folder", "-"), torch.device("cpu"), torch.float32)


def make(backbone, method="label_tokens", scoring="first_token", max_length=256, **prompt):
    cls = get_method(method)
    m = cls(
        LabelSet.from_spec(LABELS, letters=cls.letters),
        PromptTemplate(**prompt),
        scoring=scoring,
        max_length=max_length,
    )
    m.prepare(backbone)
    return m


@pytest.mark.parametrize("method", ["label_tokens", "letters"])
@pytest.mark.parametrize("chat", [True, False])
def test_batch_size_and_padding_do_not_change_logits(backbone, method, chat):
    m = make(backbone, method, chat=chat)
    one = m.score(TEXTS, batch_size=1).logits
    for bs in (2, 3, 5):
        np.testing.assert_allclose(m.score(TEXTS, batch_size=bs).logits, one, atol=1e-4)
    # Each text alone (no padding at all) gives the same row as inside a padded batch.
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(m.score([t], batch_size=1).logits[0], one[i], atol=1e-4)
    assert one.shape == (len(TEXTS), 4) and one.dtype == np.float32


def test_results_come_back_in_input_order(backbone):
    m = make(backbone)
    forward = m.score(TEXTS, batch_size=2).logits
    backward = m.score(TEXTS[::-1], batch_size=2).logits
    np.testing.assert_allclose(backward[::-1], forward, atol=1e-4)


def test_sliced_head_equals_full_vocabulary_logits(backbone, tiny_tokenizer):
    m = make(backbone, chat=False)
    z = m.score(TEXTS, batch_size=5).logits
    ids = m.tokens.first_ids
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            full_ids = tiny_tokenizer(m.rendered.format(text), add_special_tokens=False, return_tensors="pt").input_ids
            full = backbone.model(full_ids).logits[0, -1]
            np.testing.assert_allclose(z[i], full[list(ids)].numpy(), atol=1e-4)


def test_class_mass_is_share_of_vocabulary_probability(backbone):
    m = make(backbone)
    s = m.score(TEXTS, batch_size=2, class_mass=True)
    enc = m.encoder.encode(TEXTS)
    with torch.no_grad():
        for i, ids in enumerate(enc.ids):
            p = torch.softmax(backbone.model(torch.tensor([ids])).logits[0, -1], -1)
            assert s.class_mass[i] == pytest.approx(float(p[list(m.tokens.first_ids)].sum()), rel=1e-4)
    np.testing.assert_allclose(s.logits, m.score(TEXTS, batch_size=2).logits, atol=1e-5)


def test_exact_scoring_sums_token_log_probs(backbone, tiny_tokenizer):
    m = make(backbone, scoring="exact", chat=False)
    assert m.tokens.multi_token  # " Business" etc. take several tokens in the tiny BPE, or the test proves little
    s = m.score(TEXTS[:2], batch_size=4, class_mass=True)
    enc = m.encoder.encode(TEXTS[:2])
    with torch.no_grad():
        for i, prompt in enumerate(enc.ids):
            for c, seq in enumerate(m.tokens.sequences):
                ids = torch.tensor([prompt + list(seq)])
                logp = torch.log_softmax(backbone.model(ids).logits[0], -1)
                expected = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(seq))
                assert s.logits[i, c] == pytest.approx(expected, abs=1e-4)
    # Batching the (text, class) rows differently does not change the result.
    np.testing.assert_allclose(m.score(TEXTS[:2], batch_size=1).logits, s.logits, atol=1e-4)


def test_truncation_happens_inside_the_text_slot(backbone, tiny_tokenizer):
    m = make(backbone, max_length=96)
    encoder = m.encoder
    long_text = " ".join(["the quick brown fox"] * 200)
    enc = encoder.encode([long_text, "short"])
    assert enc.truncated.tolist() == [True, False]
    row = enc.ids[0]
    assert len(row) == len(encoder.head_ids) + 96 + len(encoder.tail_ids)  # max_length: the text's own tokens
    assert row[: len(encoder.head_ids)] == encoder.head_ids  # instruction intact
    assert row[-len(encoder.tail_ids) :] == encoder.tail_ids  # answer cue intact
    scores = m.score(["short", long_text, "also short"], batch_size=2)
    assert scores.truncated.tolist() == [False, True, False] and scores.n_truncated == 1  # input order


def test_prompt_longer_than_its_limit_is_a_clear_error(backbone):
    from classlm.errors import ConfigError
    from classlm.methods import get_method

    m = get_method("label_tokens")(LabelSet.from_spec(LABELS), PromptTemplate(), scoring="first_token",
                                   max_length=256, max_prompt_length=20)  # fmt: skip
    with pytest.raises(ConfigError, match="raise max_prompt_length"):
        m.prepare(backbone)


def test_split_tokenisation_matches_joint(backbone, tiny_tokenizer):
    m = make(backbone)
    for text, ids in zip(TEXTS, PromptEncoder(tiny_tokenizer, m.rendered, 512).encode(TEXTS).ids):
        assert ids == tiny_tokenizer(m.rendered.format(text), add_special_tokens=False).input_ids


def test_length_sorted_batches_cover_everything_longest_first():
    lengths = [3, 9, 1, 7, 7, 2]
    batches = list(length_sorted_batches(lengths, 4))
    assert [len(b) for b in batches] == [4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert [lengths[i] for i in batches[0]] == [9, 7, 7, 3]


def test_token_budget_bounds_padded_tokens_per_batch():
    lengths = [5, 40, 12, 3, 40, 7, 9, 100]
    batches = list(length_sorted_batches(lengths, batch_size=4, batch_tokens=80))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [len(b) for b in batches] == [1, 2, 4, 1]  # 100 alone; 2 x 40; 4 x 12 (capped by batch_size); 1 x 3
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 80


def test_last_token_hidden_reads_the_last_real_token(backbone):
    rows = [[5, 6, 7, 8], [5, 6]]
    h = last_token_hidden(backbone.model, rows, 0, torch.device("cpu"))
    alone = last_token_hidden(backbone.model, [[5, 6]], 0, torch.device("cpu"))
    torch.testing.assert_close(h[1], alone[0], atol=1e-5, rtol=0)


FEW_SHOT = {"examples": (("Shares rose on Monday.", "Business"), ("The striker scored twice.", "Sports"))}


@pytest.mark.parametrize(
    "method, prompt",
    [("label_tokens", {}), ("label_tokens", {"chat": False}), ("letters", {}), ("label_tokens", FEW_SHOT)],
)
def test_prefix_reuse_equals_the_plain_path(backbone, method, prompt):
    m = make(backbone, method, **prompt)
    reused = m.score(TEXTS, batch_size=3, class_mass=True)
    assert m.lm.cached_prefix is not None and m.lm.cached_prefix.length == len(m.encoder.head_ids)
    m.reuse_prefix = False
    plain = m.score(TEXTS, batch_size=3, class_mass=True)
    np.testing.assert_allclose(reused.logits, plain.logits, atol=1e-4)
    np.testing.assert_allclose(reused.class_mass, plain.class_mass, rtol=1e-4)


def test_prefix_cache_follows_weight_changes(backbone):
    m = make(backbone)
    before = m.score(TEXTS, batch_size=5).logits
    first_prefix = m.lm.cached_prefix
    with torch.no_grad():  # what an optimizer step does: an in-place update of a weight
        backbone.model.model.layers[0].self_attn.k_proj.weight.mul_(1.5)
    after = m.score(TEXTS, batch_size=5).logits
    assert m.lm.cached_prefix is not first_prefix
    assert np.abs(after - before).max() > 1e-3
    m.reuse_prefix = False
    np.testing.assert_allclose(after, m.score(TEXTS, batch_size=5).logits, atol=1e-4)


def test_prefix_reuse_falls_back_with_a_warning_only_when_unsupported(backbone, monkeypatch, caplog):
    import logging

    from classlm.methods import prompted
    from classlm.scoring import PrefixUnsupported

    def unsupported(*args, **kwargs):
        raise PrefixUnsupported("no cache here")

    monkeypatch.setattr(prompted, "SharedPrefix", unsupported)
    m = make(backbone)
    with caplog.at_level(logging.WARNING, logger="classlm.methods.prompted"):
        fallback = m.score(TEXTS, batch_size=2).logits
    assert not m.reuse_prefix
    assert "prompt-prefix reuse is off" in caplog.text and "no cache here" in caplog.text
    monkeypatch.undo()
    np.testing.assert_allclose(fallback, make(backbone).score(TEXTS, batch_size=2).logits, atol=1e-4)

    # Any other error is a bug: it reaches the caller instead of silently halving the throughput.
    def broken(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(prompted, "SharedPrefix", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        make(backbone).score(TEXTS, batch_size=2)


def test_prefix_reuse_gives_the_plain_loss_and_gradients(backbone):
    """Training runs the prefix once per batch with gradients: the loss and every gradient must be the plain path's."""
    from classlm.scoring import SharedPrefix

    m = make(backbone)
    model, pad = backbone.model, backbone.tokenizer.pad_token_id
    rows = m.encoder.encode(TEXTS).ids
    head = m.encoder.head_ids
    target = torch.randn(len(rows), model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def loss_and_grads(reuse: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        if reuse:
            prefix = SharedPrefix(model, head, torch.device("cpu"))
            h = last_token_hidden(model, [r[len(head) :] for r in rows], pad, torch.device("cpu"), prefix)
        else:
            h = last_token_hidden(model, rows, pad, torch.device("cpu"))
        loss = ((h - target) ** 2).mean()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads(False)
    reused_loss, reused_grads = loss_and_grads(True)
    assert reused_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == reused_grads.keys() and len(plain_grads) > 10
    for name, g in plain_grads.items():
        torch.testing.assert_close(reused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_a_prefix_kernel_that_changes_results_is_caught_and_turned_off(backbone, monkeypatch):
    """The one-time check compares both paths on the prompt alone: a kernel that ignores the prefix fails it."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from classlm import scoring

    def ignores_prefix(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("classlm_prefix").calls += 1
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    make(backbone).score(TEXTS[:1], batch_size=1)  # registers the real kernel, which the patch below replaces
    monkeypatch.setitem(AttentionInterface._global_mapping, scoring.PREFIX_ATTENTION, ignores_prefix)
    m = make(backbone)
    logits = m.score(TEXTS, batch_size=2).logits
    assert not m.reuse_prefix and m.lm.cached_prefix is None
    m.reuse_prefix = False
    np.testing.assert_allclose(logits, m.score(TEXTS, batch_size=2).logits, atol=1e-6)


def test_prefix_reuse_uses_the_supported_cache_argument(backbone, caplog):
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (removed in 5.40) and warns on the old name: the
    prefix must be built through the name this install supports, with no deprecation warning or log line."""
    import logging
    import warnings

    m = make(backbone)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="transformers"):
        warnings.simplefilter("always")
        reused = m.score(TEXTS, batch_size=3).logits
    assert m.reuse_prefix and m.lm.cached_prefix is not None
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [d for d in deprecations if "past_key_values" in d or "cache" in d], deprecations
    assert "past_key_values" not in caplog.text
    m.reuse_prefix = False
    np.testing.assert_allclose(reused, m.score(TEXTS, batch_size=3).logits, atol=1e-4)

"""Exact multi-token scoring through the answer trie: the same numbers as k full rows per text, in one extra pass."""

import numpy as np
import pytest
import torch

from classlm.config import ModelConfig
from classlm.labels import LabelSet
from classlm.methods import get_method
from classlm.models import load_backbone
from classlm.prompts import PromptTemplate
from classlm.trie import AnswerTrie

TEXTS = ["The team won the match.", "Stocks fell sharply on Monday.", "A new phone", "Great movie!", "x"]
# Answers that share their first tokens ("World", "World Sports" …) and one-token answers beside them.
NAMES = ["World", "World Sports", "World Sports Business", "Sports", "Business news", "Business"]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(ModelConfig(name=str(tiny_model_dir), device="cpu"), shared=False)


def exact(backbone, chat=True, names=NAMES):
    m = get_method("label_tokens")(LabelSet.from_spec(names), PromptTemplate(chat=chat), scoring="exact", max_length=64)
    m.prepare(backbone)
    return m


def test_trie_structure():
    trie = AnswerTrie.build([(5,), (5, 6), (5, 6, 7), (8,), (9, 10)])
    assert trie.tokens == (5, 6, 9) and trie.depth == (1, 2, 1)  # proper prefixes only, each once
    assert trie.ancestors.tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    # Every answer token is read once: where it is predicted from (0 = the text's last token, 1 + node).
    assert trie.read_at.tolist() == [0, 0, 1, 0, 1, 2, 0, 0, 3]
    assert trie.owner.tolist() == [0, 1, 1, 2, 2, 2, 3, 4, 4]
    assert AnswerTrie.build([(1,), (2,)]).size == 0


@pytest.mark.parametrize("chat", [True, False])
def test_trie_scores_equal_the_k_row_path(backbone, chat):
    m = exact(backbone, chat)
    assert m.trie.size > 0 and m.tokens.multi_token
    assert m.lm.shared_prefix() is not None  # so score() takes the trie
    trie = m.score(TEXTS, batch_size=3, class_mass=True)
    enc = m.encoder.encode(TEXTS)
    with torch.no_grad():
        rows, _ = m._exact(enc.ids, batch_size=7)  # the k-row reference: one full row per (text, class)
    np.testing.assert_allclose(trie.logits, rows.numpy(), atol=1e-4)
    np.testing.assert_allclose(trie.class_mass, np.exp(rows.numpy()).sum(1), rtol=1e-4)
    # Batches of other sizes (other padding) give the same scores.
    np.testing.assert_allclose(m.score(TEXTS, batch_size=1).logits, trie.logits, atol=1e-4)


def test_trie_trains_with_the_gradients_of_the_k_row_path(backbone):
    """Teacher forcing through the trie: the loss and its gradient equal the k-row path's."""
    import copy

    from classlm.config import LoraConfig
    from classlm.lora import add_lora

    bb = copy.copy(backbone)
    bb.model = add_lora(copy.deepcopy(backbone.model), LoraConfig(r=2), seed=0)
    m = exact(bb)
    for p in bb.model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero: nudge it so the adapters change the output
    rows = m.training_rows(TEXTS[:3])
    y = torch.tensor([0, 2, 4])
    z, _ = m.train_logits(rows)
    loss = torch.nn.functional.cross_entropy(z, y)
    grads = torch.autograd.grad(loss, [p for p in bb.model.parameters() if p.requires_grad])
    m.scoring = "exact"
    ref_z, _ = m._exact(rows, batch_size=16)
    ref = torch.autograd.grad(
        torch.nn.functional.cross_entropy(ref_z, y), [p for p in bb.model.parameters() if p.requires_grad]
    )
    torch.testing.assert_close(z, ref_z, atol=1e-4, rtol=1e-4)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert m.training_tokens(rows[0], True) == len(rows[0]) - len(m.encoder.head_ids) + m.trie.size


def test_one_token_answers_need_no_trie_nodes(backbone):
    m = exact(backbone, names=["A", "B", "C"])
    assert m.trie.size == 0
    first = get_method("label_tokens")(LabelSet.from_spec(["A", "B", "C"]), PromptTemplate(), scoring="first_token",
                                       max_length=64)  # fmt: skip
    first.prepare(backbone)
    z = m.score(TEXTS, batch_size=4).logits
    zf = first.score(TEXTS, batch_size=4).logits
    # Exact log-probabilities of one-token answers are the first-token logits less the full log-normaliser.
    np.testing.assert_allclose(z - z[:, :1], zf - zf[:, :1], atol=1e-4)

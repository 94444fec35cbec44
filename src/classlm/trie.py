"""Exact multi-token class scores from one extra pass over a prefix tree (trie) of the answers' tokens.

``scoring="exact"`` scores a class by the sum of the log-probabilities of all its answer's tokens, each given the
prompt, the text and the answer's tokens before it. Run naively that is k rows per text (one per class), each
re-reading the whole prompt and text. Here the text runs once (after the shared prompt prefix, whose keys and values
are cached), and then ONE batched pass runs the trie's nodes: every distinct proper prefix of the answers' tokens
(``" bill"`` of ``" bill balance"`` / ``" bill due"`` is one node for both). A node attends to the prompt prefix,
to its own row's text tokens (their keys and values kept from the first pass) and to its ancestors in the trie,
at the positions it would have in the full sequence, so its hidden state is the plain path's. Classes whose answers
share their first tokens share those nodes; a class whose answer is one token costs no node at all. What every
node costs is its log-softmax over the whole vocabulary (the exact normalisation), which is why this is slower than
the one-row heads (``first_token``, ``auto_verbalizer``, ``name_rows``) when answers are long.

Training uses the same two passes with gradients (teacher forcing through the trie).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from classlm.scoring import SharedPrefix, decode_with, pad_right

TRIE_ATTENTION = "classlm_trie"
# Rows of full-vocabulary logits computed at once for the log-softmax (~16 MB in float32 at SmolLM2's 49k vocab).
_LSE_CELLS = 1 << 22


@dataclass(frozen=True)
class AnswerTrie:
    """The answers' token prefix tree. Node ``i`` holds ``tokens[i]`` at depth ``depth[i]`` (1: right after the
    text); ``ancestors[i, j]``: node ``j`` is node ``i`` or above it. Each answer token is read once: predicted at
    ``read_at`` (0: the text's last token, ``1 + i``: node ``i``), as token ``targets``, for class ``owner``."""

    tokens: tuple[int, ...]
    depth: tuple[int, ...]
    ancestors: np.ndarray
    read_at: np.ndarray
    targets: np.ndarray
    owner: np.ndarray
    n_classes: int

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> AnswerTrie:
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        depth: list[int] = []
        parent: list[int] = []
        read_at, targets, owner = [], [], []
        for c, seq in enumerate(sequences):
            node = -1  # the root: the text's last token
            for j, token in enumerate(seq):
                read_at.append(node + 1)
                targets.append(token)
                owner.append(c)
                if j == len(seq) - 1:
                    break  # an answer's last token predicts nothing that is read
                key = tuple(seq[: j + 1])
                if key not in index:  # parents come first, so a node's index is above its parent's
                    index[key] = len(tokens)
                    tokens.append(token)
                    depth.append(j + 1)
                    parent.append(node)
                node = index[key]
        ancestors = np.zeros((len(tokens), len(tokens)), dtype=bool)
        for i in range(len(tokens)):
            j = i
            while j != -1:
                ancestors[i, j] = True
                j = parent[j]
        as_array = np.asarray
        return cls(tuple(tokens), tuple(depth), ancestors, as_array(read_at), as_array(targets), as_array(owner),
                   len(sequences))  # fmt: skip

    @property
    def size(self) -> int:
        """Nodes: the tokens each text runs beyond its own."""
        return len(self.tokens)


class TrieContext:
    """What the trie pass's attention reads per layer: the prompt prefix, each row's text keys/values (``rows``,
    filled by the first pass) and the mask of what each node may see."""

    def __init__(self, prefix: SharedPrefix, rows: dict[int, tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor):
        self.prefix = prefix
        self.rows = rows
        self.mask = mask
        self.calls = 0


def _trie_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Trie nodes' attention over [prompt prefix ; the row's text ; the node's ancestors and itself]."""
    ctx: TrieContext | None = kwargs.get("classlm_trie")
    if ctx is None:
        raise RuntimeError("classlm_trie attention was called without its context")
    layer = module.layer_idx
    ctx.calls += 1
    b, n_heads, _, d = query.shape
    pk, pv = ctx.prefix.layers[layer]
    rk, rv = ctx.rows[layer]
    keys = torch.cat([pk.expand(b, -1, -1, -1).to(key.dtype), rk, key], dim=2)
    values = torch.cat([pv.expand(b, -1, -1, -1).to(value.dtype), rv, value], dim=2)
    g = n_heads // key.shape[1]
    keys, values = keys.repeat_interleave(g, dim=1), values.repeat_interleave(g, dim=1)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=ctx.mask, scale=scaling)
    return out.transpose(1, 2), None


def answer_logprobs(
    model: Any,
    prefix: SharedPrefix,
    rows: list[list[int]],
    pad_id: int,
    trie: AnswerTrie,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``(b, k)``: each class's answer log-probability after each full prompt row of ``rows`` (prefix included),
    in float32; with gradients when they are enabled (training)."""
    device = weight.device
    b = len(rows)
    states = trie_states(model, prefix, rows, pad_id, trie).float()  # where each answer token is predicted from
    w = weight.float()
    lse = _logsumexp(states.reshape(-1, states.shape[-1]), w, bias).view(b, -1)
    read = torch.as_tensor(trie.read_at, device=device)
    targets = torch.as_tensor(trie.targets, device=device)
    picked = torch.einsum("brd,rd->br", states[:, read], w[targets])
    if bias is not None:
        picked = picked + bias.float()[targets]
    logp = picked - lse[:, read]
    out = torch.zeros(b, trie.n_classes, device=device, dtype=logp.dtype)
    return out.index_add(1, torch.as_tensor(trie.owner, device=device), logp)


def trie_states(model: Any, prefix: SharedPrefix, rows: list[list[int]], pad_id: int, trie: AnswerTrie) -> torch.Tensor:
    """Final-norm hidden states ``(b, 1 + N, d)``: each full prompt row's last token (prefix included in ``rows``),
    then the trie's ``N`` nodes after it; with gradients when they are enabled."""
    device = prefix.layers[0][0].device
    suffix = [r[prefix.length :] for r in rows]
    ids, _ = pad_right(suffix, pad_id, device)
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    h = prefix.hidden(ids, stash=stash)
    lengths = torch.as_tensor([len(r) for r in suffix], device=device)
    hidden = [h[torch.arange(len(rows), device=device), lengths - 1][:, None]]
    if trie.size:
        hidden.append(_node_hidden(model, prefix, stash, lengths, ids.shape[1], trie))
    return torch.cat(hidden, dim=1)


def _node_hidden(
    model: Any,
    prefix: SharedPrefix,
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]],
    lengths: torch.Tensor,
    width: int,
    trie: AnswerTrie,
) -> torch.Tensor:
    """Final-norm hidden states ``(b, N, d)`` of the trie's nodes after each row."""
    device = lengths.device
    b, n = len(lengths), trie.size
    ids = torch.as_tensor(trie.tokens, device=device).expand(b, -1)
    depth = torch.as_tensor(trie.depth, device=device)
    # A node at depth t sits t places after its row's last real token, as in the full sequence.
    positions = (prefix.length + lengths - 1)[:, None] + depth[None, :]
    own = (torch.arange(width, device=device)[None, :] < lengths[:, None])[:, None, None, :].expand(b, 1, n, width)
    mask = torch.cat(
        [
            torch.ones(b, 1, n, prefix.length, dtype=torch.bool, device=device),
            own,
            torch.as_tensor(trie.ancestors, device=device)[None, None].expand(b, 1, n, n),
        ],
        dim=-1,
    )
    ctx = TrieContext(prefix, stash, mask)
    out = decode_with(model, TRIE_ATTENTION, _trie_attention, input_ids=ids, position_ids=positions, classlm_trie=ctx)
    if ctx.calls != len(prefix.layers):
        raise RuntimeError(f"the trie pass ran {ctx.calls} of {len(prefix.layers)} attention layers")
    return out.last_hidden_state


def _logsumexp(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``logsumexp(states @ weight.T + bias)`` per row, a few rows of vocabulary logits at a time; with gradients
    each chunk is recomputed in backward instead of keeping ``(rows, V)`` logits alive."""
    step = max(1, _LSE_CELLS // weight.shape[0])

    def chunk(x: torch.Tensor) -> torch.Tensor:
        z = x @ weight.T
        return torch.logsumexp(z if bias is None else z + bias.float(), dim=-1)

    parts = []
    for start in range(0, states.shape[0], step):
        x = states[start : start + step]
        if torch.is_grad_enabled() and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(chunk, x, use_reentrant=False))
        else:
            parts.append(chunk(x))
    return torch.cat(parts)

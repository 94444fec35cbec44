"""Turning texts into token batches and batches into last-token hidden states.

Shared by every method that reads a causal LM: prompts are tokenised as head + text + tail with the text truncated
inside its slot, batches are length-sorted, right-padded, and the hidden state is read at each row's last real token
by index. Right padding keeps position ids and the causal mask of real tokens exactly as in an unpadded run (left
padding gave NaN losses under bf16 SDPA on an H100), which is why results do not depend on batch size or padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classlm.errors import ConfigError
from classlm.fields import Record, share_budget
from classlm.kernels import softmax_to
from classlm.prompts import RenderedPrompt

# The text slot must keep room for at least this many tokens, or the prompt leaves no space for the text at all.
MIN_TEXT_TOKENS = 8
# Past this, a tokenizer's model_max_length is transformers' "no limit" sentinel (1e30), not a context size.
_NO_LIMIT = 10**8


def context_length(tokenizer: Any, model: Any = None) -> int | None:
    """The most tokens a prompt may take: the model's position limit, else the tokenizer's (when it states one)."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < _NO_LIMIT else None


@dataclass(frozen=True)
class EncodedTexts:
    ids: list[list[int]]
    truncated: np.ndarray  # bool per text: cut to fit the text slot
    cut_fields: tuple[tuple[str, ...], ...] | None = None  # inputs of several fields: the ones cut, per text


class PromptEncoder:
    """Tokenises head, text and tail separately and truncates inside the text slot only.

    The head ends with a newline and the tail starts with one (or with a special token), so the three pieces
    tokenise the same apart as joined: byte-level BPE never merges across a newline followed by a letter.

    ``max_length`` bounds the text's own tokens: the head is the same for every text and is computed once (prefix
    reuse), so a long instruction or class list costs little and does not eat into the text. The whole prompt must
    fit the model's ``context`` and, when given, ``max_prompt_length``; past that the text gets what is left, and an
    error comes only when that is under :data:`MIN_TEXT_TOKENS`.
    """

    def __init__(
        self,
        tokenizer: Any,
        rendered: RenderedPrompt,
        max_length: int,
        *,
        context: int | None = None,
        max_prompt_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.rendered = rendered
        self.max_length = max_length
        self.head_ids = self._encode(rendered.head)
        if not rendered.chat:
            bos = getattr(tokenizer, "bos_token_id", None)
            # Plain-text prompts get the BOS the model was trained with; chat templates carry their own.
            if isinstance(bos, int) and tokenizer("a").input_ids[:1] == [bos]:
                self.head_ids = [bos, *self.head_ids]
        self.tail_ids = self._encode(rendered.tail)
        self.separator_ids = [self._encode(s) for s in rendered.separators]
        used = len(self.head_ids) + len(self.tail_ids) + sum(map(len, self.separator_ids))
        limits = [(n, what) for n, what in ((context, "the model's context"), (max_prompt_length,
                  "max_prompt_length")) if n is not None]  # fmt: skip
        self.text_budget = min([max_length, *(n - used for n, _ in limits)])
        if self.text_budget < MIN_TEXT_TOKENS:
            n, what = min(limits)
            raise ConfigError(
                f"the prompt takes {used} tokens, leaving {n - used} of {what} ({n} tokens) for the text (at least "
                f"{MIN_TEXT_TOKENS} needed); shorten the instruction or the class list (prompt={{'show_classes': "
                f"'names'}} lists names only, 'none' leaves the list out)"
                + (", or raise max_prompt_length" if what == "max_prompt_length" else "")
            )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        if not texts:
            return EncodedTexts([], np.zeros(0, dtype=bool))
        bodies = [self.fit_text(parts, self.text_budget) for parts in self.text_ids(texts)]
        ids = [[*self.head_ids, *body, *self.tail_ids] for body, _ in bodies]
        return EncodedTexts(ids, *self.cut_report(texts, [cut for _, cut in bodies]))

    def text_ids(self, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each text's token ids per field (one field: the whole text), tokenised in one call."""
        n = len(self.separator_ids) + 1
        if n == 1:
            # A Record read by a one-slot prompt is its laid-out string (e.g. a classifier fitted on strings).
            return [[t] for t in self.tokenizer([str(t).strip() for t in texts], add_special_tokens=False).input_ids]
        for i, t in enumerate(texts):  # the estimator reads inputs in the prompt's fields; a method called directly
            if not (isinstance(t, Record) and len(t.values) == n):
                raise ConfigError(
                    f"input #{i} has {len(getattr(t, 'values', ()) or (1,))} field(s); the prompt has {n} slots"
                )
        flat = self.tokenizer([v.strip() for t in texts for v in t.values], add_special_tokens=False).input_ids  # type: ignore[attr-defined]
        return [flat[i * n : (i + 1) * n] for i in range(len(texts))]

    def fit_text(self, parts: list[list[int]], budget: int) -> tuple[list[int], tuple[int, ...]]:
        """A text's tokens within ``budget``, its fields sharing it fairly (:func:`classlm.fields.share_budget`)
        with the separators between them; and the indices of the fields that were cut."""
        keep = share_budget([len(p) for p in parts], budget) if len(parts) > 1 else [budget]
        ids = list(parts[0][: keep[0]])
        for sep, part, k in zip(self.separator_ids, parts[1:], keep[1:]):
            ids += [*sep, *part[:k]]
        return ids, tuple(i for i, (p, k) in enumerate(zip(parts, keep)) if len(p) > k)

    @staticmethod
    def cut_report(
        texts: Sequence[str], cuts: Sequence[tuple[int, ...]]
    ) -> tuple[np.ndarray, tuple[tuple[str, ...], ...] | None]:
        """Per text: whether anything was cut, and (inputs of several fields) the names of the fields cut."""
        truncated = np.array([bool(c) for c in cuts], dtype=bool)
        if not texts or not isinstance(texts[0], Record):
            return truncated, None
        return truncated, tuple(tuple(t.fields[i] for i in c) for t, c in zip(texts, cuts))  # type: ignore[attr-defined]


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, batch_tokens: int | None = None
) -> Iterator[np.ndarray]:
    """Index batches, longest first: similar lengths share a batch so little compute goes to padding, and the
    first batch is the largest, so running out of memory shows up at once.

    A batch holds at most ``batch_size`` rows and, with ``batch_tokens``, at most that many padded tokens (rows x
    its longest row); a row longer than the budget runs alone. On CPU a forward pass is fastest at a few hundred
    tokens (the activations stay in cache), so short texts get many rows per batch and long ones few.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    start = 0
    while start < len(order):
        # Sorted longest first, so the first row of a batch sets its padded width.
        width = max(int(lengths[order[start]]), 1)
        n = batch_size if batch_tokens is None else max(1, min(batch_size, batch_tokens // width))
        yield order[start : start + n]
        start += n


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every row right-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def decoder_of(model: Any) -> Any:
    """The transformer stack without the LM head (``LlamaModel`` inside ``LlamaForCausalLM``), also under peft."""
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model.base_model


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states ``(b, L, d)``: the LM head is skipped, so no full-vocabulary logits anywhere."""
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def output_head(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight ``(V, d)`` and bias (usually None)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no LM head; label-token scoring needs a causal LM")
    return head.weight, getattr(head, "bias", None)


class PrefixUnsupported(Exception):
    """This model's prompt prefix cannot be reused (its cache or attention is not what the prefix path reproduces):
    the one signal that turns reuse off. Any other error while scoring is a bug and propagates."""


# Name under which the prefix-broadcasting attention is registered with transformers' AttentionInterface.
PREFIX_ATTENTION = "classlm_prefix"


def _cache_argument(decoder: Any) -> str:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before.

    5.24 renamed it and warns (FutureWarning) on every call with the old name, which 5.40 removes; the signature
    (``deprecate_kwarg`` keeps it, through ``functools.wraps``) says which one this install has.
    """
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


class SharedPrefix:
    """Keys and values of the prompt head, computed once and shared by every row of every batch.

    Every prompt starts with the same head tokens (system message, instruction, class list, few-shot examples), and
    a causal model's keys and values for them depend on nothing after them. So the head runs once (batch 1) and each
    batch runs only its texts' own tokens (text + tail) at positions ``P + j``, exactly where they sit in the full
    sequence. Their attention (``_prefix_attention``) scores each query against the batch-1 prefix keys and the
    row's own keys and takes one softmax over both: the prefix is never copied per row, nor per query head.

    Built with gradients enabled (training), the prefix keys/values keep their graph, so the loss is the plain
    path's and so are the gradients, which flow into the prefix once per batch instead of once per row.
    """

    def __init__(self, model: Any, head_ids: Sequence[int], device: torch.device) -> None:
        from transformers import DynamicCache

        self.length = len(head_ids)
        self.model = model
        ids = torch.as_tensor([list(head_ids)], dtype=torch.long, device=device)
        decoder = decoder_of(model)
        cache: Any = DynamicCache(config=model.config)  # its layer types are a union; keys are checked below
        # The forward fills ``cache`` in place, so it is read from here, never from the output (whose
        # ``past_key_values`` attribute is deprecated too).
        try:
            decoder(input_ids=ids, use_cache=True, **{_cache_argument(decoder): cache})
            layers = [(layer.keys, layer.values) for layer in cache.layers]
        except (TypeError, AttributeError, NotImplementedError) as exc:  # a model without this cache interface
            raise PrefixUnsupported(f"{type(model).__name__} cannot fill a reusable cache ({exc})") from exc
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = layers
        if len(self.layers) == 0 or any(k is None or k.shape[-2] != self.length for k, _ in self.layers):
            raise PrefixUnsupported(f"{type(model).__name__} returned a cache that cannot be reused as a prompt prefix")
        self.calls = 0
        self._per_query_head: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def per_query_head(self, layer: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s prefix keys/values repeated to one per query head, ``(1, H, P, d)``; made once, as
        the prefix is batch 1 this costs one prefix's worth of memory, not one per row."""
        if layer not in self._per_query_head:
            k, v = self.layers[layer]
            self._per_query_head[layer] = (k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1))
        return self._per_query_head[layer]

    def hidden(self, ids: torch.Tensor, stash: dict[int, Any] | None = None) -> torch.Tensor:
        """Final-norm hidden states ``(b, S, d)`` of right-padded suffix rows ``ids`` that follow the prefix; with
        ``stash``, each layer's keys and values of those rows go into it (the answer trie attends to them)."""
        b, s = ids.shape
        positions = torch.arange(self.length, self.length + s, device=ids.device).expand(b, -1)
        self.calls = 0
        # No attention mask: right padding means a real token's causal window holds only real tokens, and
        # transformers builds no mask for an implementation it has no mask function for.
        h = decode_with(
            self.model, PREFIX_ATTENTION, _prefix_attention,
            input_ids=ids, position_ids=positions, classlm_prefix=self, classlm_stash=stash,
        )  # fmt: skip
        if self.calls != len(self.layers):
            raise RuntimeError(
                f"{type(self.model).__name__} ran {self.calls} of {len(self.layers)} attention layers through the "
                "attention interface; the prompt prefix cannot be reused with it"
            )
        return h.last_hidden_state


def _prefix_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of suffix queries over [shared prefix ; own causal suffix] with one softmax.

    ``query`` is ``(b, H, S, d)``, ``key``/``value`` ``(b, h, S, d)`` with ``H = g * h`` (grouped-query attention:
    query head ``i`` reads kv head ``i // g``). The prefix keys are ``(1, h, P, d)``; folding the batch into the
    query rows, ``(h, b*g*S, d) @ (h, d, P)``, reads them once for the whole batch.
    """
    prefix: SharedPrefix | None = kwargs.get("classlm_prefix")
    if prefix is None:
        raise RuntimeError("classlm_prefix attention was called without a prefix")
    # Variants this kernel does not implement: reusing the prefix would silently change the model.
    if any(kwargs.get(k) is not None for k in ("sliding_window", "softcap", "s_aux")) or getattr(
        module, "sliding_window", None
    ):
        raise NotImplementedError(f"{type(module).__name__} uses sliding windows, attention sinks or soft-capping")
    pk, pv = prefix.layers[module.layer_idx]
    prefix.calls += 1
    stash = kwargs.get("classlm_stash")
    if stash is not None:
        stash[module.layer_idx] = (key, value)
    b, n_heads, s, d = query.shape
    h = key.shape[1]
    g = n_heads // h
    p = pk.shape[-2]
    scale = d**-0.5 if scaling is None else scaling
    if _FUSED_CPU is not None and query.device.type == "cpu" and not torch.is_grad_enabled():
        return _fused_cpu(prefix, module.layer_idx, query, key, value, g, scale), None
    q = (query * scale).reshape(b, h, g * s, d)
    # Scores laid out (h, b, g*S, P + S): the prefix part as one batched matmul per kv head.
    q_folded = q.transpose(0, 1).reshape(h, b * g * s, d)
    scores_prefix = torch.matmul(q_folded, pk[0].transpose(-1, -2)).view(h, b, g * s, p)
    scores_own = torch.matmul(q, key.transpose(-1, -2)).transpose(0, 1)
    causal = torch.ones(s, s, dtype=torch.bool, device=query.device).tril().repeat(g, 1)
    scores_own = scores_own.masked_fill(~causal, torch.finfo(scores_own.dtype).min)
    scores = torch.cat([scores_prefix, scores_own], dim=-1)
    # Softmax in float32 even under bf16, as the plain sdpa path does internally; in training only the bf16
    # probabilities are kept for backward (autograd's softmax + cast kept the float32 ones as well: 220 MB a step).
    probs = softmax_to(scores, query.dtype)
    if dropout > 0.0 and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs[..., :p].reshape(h, b * g * s, p), pv[0]).view(h, b, g * s, d)
    out = out + torch.matmul(probs[..., p:], value.transpose(0, 1))
    # -> (b, S, H, d), the layout the attention module reshapes into its output projection.
    return out.view(h, b, g, s, d).permute(1, 3, 0, 2, 4).reshape(b, s, n_heads, d), None


# PyTorch's CPU flash-attention kernel, which also returns each query's log-sum-exp: two attention passes (prefix,
# own tokens) merge exactly by their log-sum-exps. Private, so looked up once and only used when present.
_FUSED_CPU: Any = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_cpu(
    prefix: SharedPrefix, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: int, scale: float
) -> torch.Tensor:
    """Inference-only form of ``_prefix_attention``: 3x faster on CPU, but its log-sum-exp has no gradient."""
    b, n_heads, s, d = query.shape
    pk, pv = prefix.per_query_head(layer, g)
    # Every row's queries as one batch-1 sequence against the prefix: no mask, the prefix read once.
    out_p, lse_p = _FUSED_CPU(query.transpose(0, 1).reshape(1, n_heads, b * s, d), pk, pv, 0.0, False, scale=scale)
    out_p = out_p.view(n_heads, b, s, d).transpose(0, 1)
    lse_p = lse_p.view(n_heads, b, s).transpose(0, 1)
    k = key.repeat_interleave(g, dim=1)
    v = value.repeat_interleave(g, dim=1)
    out_s, lse_s = _FUSED_CPU(query, k, v, 0.0, True, scale=scale)
    # softmax over [prefix ; own] = each part's softmax weighted by its share of the total exp-sum.
    # One fused lerp (out_s + w * (out_p - out_s)) instead of three elementwise passes: in bf16 on AMX the matmuls
    # got so fast that those passes were a measurable share of the prefix's extra cost.
    w = torch.sigmoid(lse_p - lse_s).unsqueeze(-1).to(out_p.dtype)
    return torch.lerp(out_s, out_p, w).transpose(1, 2)


_registered: set[str] = set()


def decode_with(model: Any, name: str, attention: Callable[..., Any], **forward: Any) -> Any:
    """The decoder stack's forward (``use_cache=False``) with ``attention`` registered as transformers' attention
    implementation ``name`` (once per process) and used for this forward only: the implementation is read from the
    config at every attention call, so the other paths (and other users of the model) keep sdpa. Not thread-safe:
    one forward at a time."""
    if name not in _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(name, attention)
        _registered.add(name)
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = name
    try:
        return decoder_of(model)(use_cache=False, **forward)
    finally:
        config._attn_implementation = saved


def last_token_hidden(
    model: Any,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    prefix: SharedPrefix | None = None,
) -> torch.Tensor:
    """Hidden state at each row's last real token, ``(b, d)``, in the model's dtype.

    With ``prefix``, each row holds only the tokens after it (text + tail) and attends to its keys/values.
    """
    ids, mask = pad_right(rows, pad_id, device)
    h = hidden_states(model, ids, mask) if prefix is None else prefix.hidden(ids)
    last = torch.as_tensor([len(r) - 1 for r in rows], device=device)
    return h[torch.arange(len(rows), device=device), last]


def weights_version(model: Any) -> tuple[int, int]:
    """Changes whenever any parameter is modified in place (optimizer steps, loading weights): the prefix cache is
    keyed on it, so it is recomputed after training instead of serving stale keys and values."""
    return id(model), sum(p._version for p in model.parameters())

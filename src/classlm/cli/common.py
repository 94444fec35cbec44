"""What the verbs share besides options: the consoles, library messages in the CLI's terms, warnings on stderr,
and ``--labels``."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from classlm.errors import ConfigError

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages are read whole (and grepped): never cut at 80 columns


def command_line() -> str:
    """The command as typed (``classlm`` and its arguments, shell-quoted), for reports that say what made them."""
    import shlex
    import sys

    return shlex.join(["classlm", *sys.argv[1:]])


def parse_labels(spec: str | None) -> Any:
    """``--labels``: a comma list, a JSON file, or a dataset folder with labels.json."""
    if spec is None:
        return None
    path = Path(spec)
    if path.is_dir():
        from classlm.data import find_label_spec

        found = find_label_spec(path)
        if found is None:
            raise ConfigError(f"{path} has no labels.json; pass --labels name1,name2,…")
        return found
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"labels file not found: {path}")
        from classlm.data import read_labels_file

        return read_labels_file(path)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated class names, got {spec!r}")
    return names


def parse_priors(spec: str | None) -> Any:
    """``--priors``: ``auto``, ``em`` or ``bbse`` (estimated from the texts at hand), a JSON object
    ``{"class": weight, …}``, or a .json file holding one."""
    from classlm.priors import PRIOR_METHODS

    if spec is None or spec in PRIOR_METHODS:
        return spec
    text = spec
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"--priors: file not found: {path}")
        text = path.read_text(encoding="utf-8")
    try:
        priors = json.loads(text)
    except json.JSONDecodeError:
        priors = None
    if not isinstance(priors, dict):
        raise ConfigError(
            f'--priors: expected a JSON object such as \'{{"spam": 0.1, "ham": 0.9}}\', a .json file holding '
            f"one, or auto / em / bbse to estimate the balance from the texts; got {spec!r}"
        )
    return priors


# The library's messages name Python arguments (``method='letters'``); on the command line the same advice must
# name the flags. Ordered: the specific patterns come before the generic ``name=value`` ones.
def _flag(m: re.Match[str]) -> str:
    value = next((g for g in m.groups()[1:] if g), None)
    return f"--{m.group(1).replace('_', '-')}" + (f" {value}" if value else "")


_CLI_TERMS: tuple[tuple[str, Any], ...] = (
    (r"\s*\(--[a-z-]+( on the command line)?\)", ""),  # "(--split on the command line)": the rewrite says it
    (r"labels=\{name: \{'verbalizer': \.\.\.\}\}", '--labels FILE.json holding {"NAME": {"verbalizer": "..."}}'),
    (r"labels=\[([^\]]*)\]", lambda m: "--labels " + ",".join(re.findall(r"'([^']*)'", m.group(1)))),
    (r"\b(split|text_col|label_col)=(?:'\.\.\.'|\.\.\.|'([^']*)')", _flag),
    (r"\b(method|scoring|loss|device|dtype|max_length|eval_every|oos_label|calibration)=(?:'([^']*)'|(\d+))", _flag),
    (r"\b(raise|lower) (max_length|eval_every)\b", lambda m: f"{m.group(1)} --{m.group(2).replace('_', '-')}"),
    (
        r"^(max_length|batch_size|batch_tokens|dtype|abstain_below|abstain_label) must be",
        lambda m: f"--{m.group(1).replace('_', '-')} must be",
    ),
    # TrainConfig's own batch: --train-batch on the command line (--batch-size is the scoring batch).
    (
        r"^batch_size \((\d+)\) must be a multiple of grad_accum \((\d+)\)",
        r"--train-batch (\1) must be a multiple of --grad-accum (\2)",
    ),
    (r"\bload with drop_invalid=True\b", "pass --drop-invalid"),
    (r"^priors: ", "--priors: "),
    (r", or pass label_col=None, require_labels=False for unlabelled data", ""),
    (r" and pass the Dataset\b", ", save it with Dataset.to_json('data.jsonl') and pass that file"),
)


def cli_terms(message: str) -> str:
    """A library error message with its Python spellings replaced by the CLI flags that do the same."""
    for pattern, replacement in _CLI_TERMS:
        message = re.sub(pattern, replacement, message)
    return message


class _WarningsToStderr(logging.Handler):
    """classlm's warnings (e.g. an --eval-every longer than the run) as one ``warning:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]warning:[/] {escape(cli_terms(record.getMessage()))}", highlight=False, soft_wrap=True)


def log_warnings() -> None:
    logger = logging.getLogger("classlm")
    if not any(isinstance(h, _WarningsToStderr) for h in logger.handlers):
        handler = _WarningsToStderr(logging.WARNING)
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.WARNING, logging.WARNING))


def quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

"""Command-line options generated from the config dataclasses (litgpt's way), so a field's type, default and help
are written once, in :mod:`classlm.config`, and the CLI cannot drift from them.

How: typer builds a command from ``inspect.signature(callback)``, which returns a function's ``__signature__`` when
it has one. :func:`with_config_options` wraps a verb in a function whose ``__signature__`` is the verb's own with one
keyword-only placeholder parameter (e.g. ``training: dict[str, Any]``) replaced by one ``Annotated[type,
typer.Option(...)]`` parameter per exposed field; the wrapper gathers those values back into ``{field: value}`` and
calls the verb with it. Plain typer: no click-level parameters, no code generated as text.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConfigOptions:
    """The fields of ``config`` that a verb exposes, each as ``--<name>`` where ``name`` is ``params[field]``.

    ``params`` keeps today's spellings (``batch_size`` is ``--train-batch``: ``--batch-size`` is the scoring batch)
    and orders the options in ``--help``. ``minimum``: click range checks, so a bad number is a usage error (exit 2)
    before anything loads, as for every other numeric option.
    """

    config: type
    params: Mapping[str, str]
    minimum: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def parameters(self) -> list[inspect.Parameter]:
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        types = typing.get_type_hints(self.config)  # the fields' types, resolved (config.py defers annotations)
        out = []
        for name, param in self.params.items():
            f = fields[name]
            option = typer.Option(f"--{param.replace('_', '-')}", help=f.metadata["help"], min=self.minimum.get(name))
            annotation = Annotated[types[name], option]  # type: ignore[valid-type]
            out.append(
                inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=annotation)
            )
        return out

    def take(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Pop this group's option values out of a command's ``kwargs``: ``{field: value}``."""
        return {name: kwargs.pop(param) for name, param in self.params.items()}

    def as_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``{field: value}`` back under the parameter names, as the command line spelt them."""
        return {param: values[name] for name, param in self.params.items()}


def with_config_options(**groups: ConfigOptions) -> Callable[[F], F]:
    """Replace each keyword-only parameter of the decorated verb named in ``groups`` by that group's options."""

    def decorate(verb: F) -> F:
        hints = typing.get_type_hints(verb, include_extras=True)  # Annotated[...] kept: it carries typer's Option
        params: list[inspect.Parameter] = []
        for p in inspect.signature(verb).parameters.values():
            if p.name in groups:
                params += groups[p.name].parameters()
            else:
                params.append(p.replace(annotation=hints[p.name]))

        @functools.wraps(verb)
        def command(**kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group.take(kwargs)
            return verb(**kwargs)

        # typer reads the signature (and resolves annotations with get_type_hints): both must describe the options,
        # not the verb's placeholders that functools.wraps copied.
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate

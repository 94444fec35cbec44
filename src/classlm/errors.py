"""Exception hierarchy.

Every error classlm raises on purpose is a :class:`ClasslmError`; each subclass also subclasses the builtin a caller
would naturally catch (``ValueError`` for bad input, ``RuntimeError``/``OSError`` for environment problems), so code
written against the builtins keeps working. The CLI prints these as one line and exits non-zero.
"""

from __future__ import annotations


class ClasslmError(Exception):
    """Base class of every error classlm raises deliberately."""


class ConfigError(ClasslmError, ValueError):
    """A configuration value is invalid (bad label set, bad prompt, bad option)."""


class DataError(ClasslmError, ValueError):
    """Input data is unusable: missing column, empty text, unknown label, unreadable file."""


class ModelLoadError(ClasslmError, OSError):
    """A backbone or tokenizer could not be found or loaded."""


class ArtifactError(ClasslmError, ValueError):
    """A saved classifier directory is missing, corrupt or does not match the tokenizer."""


class NotFittedError(ClasslmError, ValueError, AttributeError):
    """The estimator is used before ``fit`` (mirrors ``sklearn.exceptions.NotFittedError``).

    LMClassifier and Ensemble raise :class:`classlm.estimator.NotFittedError`, a subclass that is also
    scikit-learn's; it is defined there because this module must import without scikit-learn.
    """


class RemoteError(ClasslmError, RuntimeError):
    """A remote model server failed, refused, or answered without what classification needs (logprobs)."""

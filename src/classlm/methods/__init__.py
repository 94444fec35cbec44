"""Methods: each turns texts into class logits ``(n_samples, n_classes)`` ordered like ``classes_``.

The contract and the registry are in :mod:`classlm.methods.base`; one module per method, with its options
dataclass beside it. The shipped methods register on the first lookup; a method a program registers itself (a
test file, say) works in ``LMClassifier``, the CLI's ``--method``, save/load and ``classlm bench`` alike.
"""

from classlm.methods.base import Method, available_methods, get_method, register

__all__ = ["Method", "available_methods", "get_method", "register"]

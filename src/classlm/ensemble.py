"""``Ensemble``: combine already-fitted classifiers into one with calibrated class probabilities.

The members' log-probabilities are averaged with weights ``w`` on the simplex, ``z = sum_i w_i log p_i``, and
``softmax(z)`` is the ensemble's distribution: a (weighted, normalised) product of experts, the geometric rather than
the arithmetic mean. A member that is confident and right pushes its class up by many nats, while members that are
unsure spread their mass and barely move ``z``, so the confident one can outvote them; an arithmetic mean would let
two unsure members dilute it. A member that is confidently *wrong* hurts just as much, which is why the weights are
not guessed: ``fit`` chooses them by minimising the NLL on held-out labelled data, then fits one temperature on the
same data (the product of experts is usually too sharp or too flat after renormalising).

Saved as a folder: ``ensemble.json`` (weights, temperature, classes, member folder names) and one classifier folder
per member, ``member-0``, ``member-1``, … in the member's own format. No pickle.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

from classlm.calibration import TemperatureScaler
from classlm.data import as_texts, validate_labels
from classlm.errors import ArtifactError, ConfigError, DataError
from classlm.estimator import CalibratedClassifier, NotFittedError, as_classes, check_label_kind, check_targets
from classlm.io import write_text_atomic
from classlm.metrics import log_softmax, softmax
from classlm.priors import check_saved_priors
from classlm.scores import Scores

__all__ = ["ENSEMBLE_MANIFEST", "ENSEMBLE_SCHEMA_VERSION", "Ensemble"]

ENSEMBLE_SCHEMA_VERSION = 1
ENSEMBLE_MANIFEST = "ensemble.json"
CALIBRATIONS = ("temperature", "none")
_P_MIN = 1e-12  # probabilities are clipped here before the log: one zero would make z = -inf for that class
# [0-9], not \d: \d also matches other scripts' digits ("member-٣"), which no save ever writes.
_MEMBER_DIR = re.compile(r"member-[0-9]+")
_ROW_SUM_TOL = 1e-3  # same tolerance as classlm.metrics: float32 softmax rows pass, logits passed by mistake do not


def _member_dir(i: int) -> str:
    return f"member-{i}"


def _nll(log_p: np.ndarray, y: np.ndarray) -> float:
    """Mean NLL of the true class from (row-normalised) log-probabilities."""
    return float(-np.mean(log_p[np.arange(y.shape[0]), y]))


class Ensemble(CalibratedClassifier):
    """Weighted product of experts of already-fitted classifiers, with a fitted temperature on top.

    ``__init__`` only stores its arguments (the scikit-learn contract); ``fit`` validates them.

    Parameters
    ----------
    estimators:
        At least two *fitted* classifiers, each with ``classes_`` and ``predict_proba(X)`` returning calibrated
        probabilities whose columns follow its ``classes_`` (an :class:`~classlm.LMClassifier` is one). They must
        share one set of classes, in any order: columns are aligned to the first member's ``classes_``. ``fit``
        never refits them. Note ``sklearn.base.clone`` clones the members too, unfitted; wrap each member in
        ``sklearn.frozen.FrozenEstimator`` to keep it fitted through a clone.
    weights:
        ``None``: fit the weights on the held-out data passed to ``fit``. Else one non-negative number per member
        (not all zero), used normalised to sum 1.
    calibration:
        ``"temperature"``: fit one temperature on the combined logits of the same held-out data. ``"none"``: T = 1.
    """

    def __init__(
        self,
        estimators: Sequence[Any],
        weights: Sequence[float] | None = None,
        calibration: str = "temperature",
    ) -> None:
        self.estimators = estimators
        self.weights = weights
        self.calibration = calibration

    # -- validation ---------------------------------------------------------------------------------------------
    def _members(self) -> list[Any]:
        if isinstance(self.estimators, (str, bytes)) or not isinstance(self.estimators, Sequence):
            raise ConfigError(f"estimators must be a list of fitted classifiers, got {type(self.estimators).__name__}")
        members = list(self.estimators)
        if len(members) < 2:
            raise ConfigError(f"an Ensemble needs at least 2 fitted members, got {len(members)}")
        for i, m in enumerate(members):
            if not hasattr(m, "classes_"):
                raise NotFittedError(
                    f"member {i} ({type(m).__name__}) is not fitted (it has no classes_); an Ensemble combines "
                    "already-fitted classifiers: fit or load each member first"
                )
            if not callable(getattr(m, "predict_proba", None)):
                raise ConfigError(f"member {i} ({type(m).__name__}) has no predict_proba method")
        return members

    @staticmethod
    def _column_orders(members: Sequence[Any], classes: Any, error: type[Exception]) -> list[np.ndarray]:
        """For each member, the indices of its columns that give ``classes`` order; ``error`` on a mismatch."""
        want = list(classes)
        if len(set(want)) != len(want):
            raise error(f"classes {want} contain duplicates")
        orders = []
        for i, m in enumerate(members):
            have = list(m.classes_)
            if len(set(have)) != len(have):
                raise error(f"member {i} has duplicate classes: {have}")
            if set(have) != set(want):
                extra = sorted(map(str, set(have) - set(want)))
                missing = sorted(map(str, set(want) - set(have)))
                raise error(
                    f"member {i} has different classes than the ensemble ({want}): it has {extra} that the ensemble "
                    f"lacks and lacks {missing}; every member must predict the same set of classes"
                )
            position = {c: j for j, c in enumerate(have)}
            orders.append(np.array([position[c] for c in want], dtype=np.int64))
        return orders

    def _given_weights(self, m: int) -> np.ndarray:
        if isinstance(self.weights, (str, bytes)) or not isinstance(self.weights, (Sequence, np.ndarray)):
            raise ConfigError(f"weights must be None or a list of {m} numbers, got {type(self.weights).__name__}")
        try:
            w = np.asarray(self.weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"weights must be numbers, got {list(self.weights)!r}") from None
        if w.shape != (m,):
            raise ConfigError(f"weights: expected one weight per member ({m}), got {self.weights!r}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ConfigError(f"weights must be finite and non-negative, got {w.tolist()}")
        if not w.sum() > 0:
            raise ConfigError("weights are all zero; at least one member needs a positive weight")
        return w / w.sum()

    def check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(
                "this Ensemble is not fitted yet; call fit(X_heldout, y_heldout) or Ensemble.load(path)"
            )

    # -- scoring ------------------------------------------------------------------------------------------------
    @staticmethod
    def _member_log_probs(members: Sequence[Any], orders: Sequence[np.ndarray], texts: list[Any]) -> np.ndarray:
        """Clipped log-probabilities of every member, shape ``(m, n, k)``, columns in ``classes_`` order.

        Each member is scored exactly once here: an LM member's ``predict_proba`` is a forward pass per text.
        """
        n, k = len(texts), len(orders[0])
        out = np.empty((len(members), n, k), dtype=np.float64)
        for i, (member, order) in enumerate(zip(members, orders)):
            p = np.asarray(member.predict_proba(texts), dtype=np.float64)
            if p.shape != (n, k):
                raise ConfigError(f"member {i}: predict_proba returned shape {p.shape}, expected ({n}, {k})")
            if n and (
                not np.all(np.isfinite(p))
                or p.min() < -_ROW_SUM_TOL
                or np.max(np.abs(p.sum(axis=1) - 1.0)) > _ROW_SUM_TOL
            ):
                raise ConfigError(
                    f"member {i}: predict_proba must return probabilities (finite, >= 0, rows summing to 1)"
                )
            out[i] = np.log(np.clip(p[:, order], _P_MIN, 1.0))
        return out

    @staticmethod
    def _combine(log_p: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.tensordot(w, log_p, axes=1)

    @staticmethod
    def _fit_weights(log_p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Weights on the simplex, ``w = softmax(theta)``, minimising the mean NLL of ``softmax(sum w_i L_i)``."""
        m, n = log_p.shape[0], log_p.shape[1]
        rows = np.arange(n)
        at_y = log_p[:, rows, y]  # (m, n): each member's log-probability of the true class

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = softmax(theta)
            ls = log_softmax(np.tensordot(w, log_p, axes=1), axis=1)
            value = float(-np.mean(ls[rows, y]))
            # dNLL/dw_i = mean(E_p[L_i] - L_i[y]); then through the softmax: dw/dtheta = diag(w) - w w^T.
            g_w = np.mean(np.einsum("mnk,nk->mn", log_p, np.exp(ls)) - at_y, axis=1)
            return value, w * (g_w - w @ g_w)

        theta0 = np.zeros(m)
        start = objective(theta0)[0]
        res = minimize(
            objective,
            theta0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10},
        )
        theta = np.asarray(res.x, dtype=np.float64)
        final = objective(theta)[0]
        if not final <= start:  # also catches nan: equal weights are always available, never end worse
            theta, final = theta0, start
        info = {"success": bool(res.success), "iterations": int(res.nit), "nll_equal_weights": start}
        return softmax(theta), info

    # -- estimator API ------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> Ensemble:
        """Fit the weights (unless given) and the temperature on HELD-OUT labelled data; returns ``self``.

        ``(X, y)`` must be data none of the members was trained or calibrated on: on a member's own training data
        that member looks better than it is and would take all the weight. Members are not refitted.
        """
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        members = self._members()
        given = None if self.weights is None else self._given_weights(len(members))
        classes = as_classes(members[0].classes_)  # typed like the members' (integer classes stay integers)
        orders = self._column_orders(members, classes, ConfigError)
        texts = as_texts(X)
        if y is None:
            raise DataError("Ensemble.fit needs held-out labels: fit(X_heldout, y_heldout)")
        y_arr = check_targets(y)
        check_label_kind(classes, y_arr)
        labels = [str(v) for v in y_arr]
        if len(labels) != len(texts):
            raise DataError(f"X has {len(texts)} texts but y has {len(labels)} labels; they must match")
        if not texts:
            raise DataError("Ensemble.fit needs at least one held-out labelled example, got 0")
        names = [str(c) for c in classes]
        validate_labels(labels, names)
        index = {name: j for j, name in enumerate(names)}
        y_idx = np.array([index[v] for v in labels], dtype=np.int64)

        # Locals until everything succeeded: a refit that fails half-way must not pair old weights with new members.
        log_p = self._member_log_probs(members, orders, texts)
        if given is None:
            w, opt = self._fit_weights(log_p, y_idx)
        else:
            w, opt = given, None
        z = self._combine(log_p, w)
        calibrator = TemperatureScaler()
        if self.calibration == "temperature":
            calibrator.fit(z, y_idx)
        self.members_ = members
        self._orders_ = orders
        self.classes_ = classes
        self.weights_ = w
        self.calibrator_ = calibrator
        self.fit_info_: dict[str, Any] = {
            "n": len(texts),
            "member_nll": [_nll(log_softmax(log_p[i], axis=1), y_idx) for i in range(len(members))],
            "nll_before": _nll(log_softmax(z, axis=1), y_idx),
            "nll_after": _nll(log_softmax(calibrator.transform(z), axis=1), y_idx),
            "weights": "given" if opt is None else "fitted",
            "optimizer": opt,
        }
        # Calibrated on these rows: a prior shift (adapt_priors, predict_proba(priors=...)) starts from their balance.
        self.calibration_info_: dict[str, Any] = {}
        self.record_calibration_rows(y_idx, softmax(calibrator.transform(z)), "held-out rows")
        return self

    def predict_scores(self, X: Any, *, class_mass: bool = False) -> Scores:
        """The combined member logits ``z = sum_i w_i log p_i`` (before the ensemble's temperature), ``(n, k)``."""
        self.check_fitted()
        log_p = self._member_log_probs(self.members_, self._orders_, as_texts(X))
        return Scores(self._combine(log_p, self.weights_))

    def model_info(self) -> dict[str, Any]:
        info = super().model_info()
        info["members"] = [getattr(m, "method", type(m).__name__) for m in self.members_]
        info["run"] = self.run_info()  # the process: CPU, versions; each member's dtype in member_runs
        info["member_runs"] = [m.run_info() if callable(getattr(m, "run_info", None)) else None for m in self.members_]
        return info

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the ensemble into folder ``path``: one folder per member (its own ``save``), then ``ensemble.json``.

        The manifest is written last and atomically. When re-saving over an ensemble, its old manifest is removed
        first, so an interrupted save leaves a folder that refuses to load rather than old weights paired with new
        members. Leftover ``member-<n>`` folders of a larger earlier ensemble are removed after.
        """
        self.check_fitted()
        for i, m in enumerate(self.members_):
            if not callable(getattr(m, "save", None)):
                raise ConfigError(f"member {i} ({type(m).__name__}) has no save(path) method; it cannot be saved")
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{target} is a file; an ensemble is saved as a folder — choose another path")
        manifest = target / ENSEMBLE_MANIFEST
        if target.is_dir() and not manifest.is_file():
            foreign = sorted(
                p.name for p in target.iterdir() if not (_MEMBER_DIR.fullmatch(p.name) or p.name[:1] == ".")
            )
            if foreign:
                raise ConfigError(
                    f"{target} exists and is not an ensemble folder (it holds {foreign[:3]}); refusing to write into it"
                )
        target.mkdir(parents=True, exist_ok=True)
        manifest.unlink(missing_ok=True)
        folders = [_member_dir(i) for i in range(len(self.members_))]
        for member, name in zip(self.members_, folders):
            member.save(target / name)
        doc = {
            "schema_version": ENSEMBLE_SCHEMA_VERSION,
            "kind": "ensemble",
            "classes": [str(c) for c in self.classes_],
            "members": folders,
            "weights": [float(v) for v in self.weights_],
            "calibrator": self.calibrator_.to_dict(),
            "params": {
                "weights": None if self.weights is None else [float(v) for v in self.weights],
                "calibration": self.calibration,
            },
            "fit_info": self.fit_info_,
            "priors": self.calibration_info_.get("priors"),
        }
        write_text_atomic(manifest, json.dumps(doc, indent=2, allow_nan=False))
        for old in target.iterdir():
            if _MEMBER_DIR.fullmatch(old.name) and old.name not in folders and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Ensemble:
        """Load a saved ensemble; each member is loaded with ``LMClassifier.load(folder, **overrides)`` (run
        options such as device, dtype, batch_size). Raises ArtifactError on a missing or corrupt folder."""
        folder = Path(path)
        doc = _read_manifest(folder)
        from classlm.classifier import LMClassifier  # torch and transformers load only when a model is needed

        members_dirs = doc["members"]
        members = []
        for name in members_dirs:
            try:
                members.append(LMClassifier.load(folder / name, **overrides))
            except ArtifactError as exc:
                raise ArtifactError(f"{folder}: member folder {name!r}: {exc}") from exc
        # The manifest names the classes; their values (integers, say) are the members' own.
        typed = {str(c): c for c in members[0].classes_}
        classes = as_classes([typed.get(name, name) for name in doc["classes"]])
        orders = cls._column_orders(members, classes, ArtifactError)
        params = doc["params"]
        ens = cls(estimators=members, weights=params["weights"], calibration=params["calibration"])
        ens.members_ = members
        ens._orders_ = orders
        ens.classes_ = classes
        ens.weights_ = np.asarray(doc["weights"], dtype=np.float64)
        ens.calibrator_ = doc["calibrator"]
        ens.fit_info_ = doc["fit_info"]
        ens.calibration_info_ = {"priors": doc["priors"]}  # {} in ensembles saved before priors
        return ens


def _bad(file: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{file}: {what}; the ensemble folder is corrupt — save it again")


def _read_manifest(folder: Path) -> dict[str, Any]:
    """Read and validate ``ensemble.json``; the calibrator comes back as a TemperatureScaler."""
    file = folder / ENSEMBLE_MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{folder} is not an ensemble folder: {ENSEMBLE_MANIFEST} not found")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(file, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise _bad(file, f"expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    # type() check: True == 1 and 1.0 == 1 in Python, and neither is a version this code wrote.
    if type(version) is not int or version != ENSEMBLE_SCHEMA_VERSION:
        raise ArtifactError(
            f"{file}: schema_version {version!r} is not supported by this classlm (expects {ENSEMBLE_SCHEMA_VERSION})"
        )
    if doc.get("kind") != "ensemble":
        raise _bad(file, f"expected kind 'ensemble', got {doc.get('kind')!r}")

    names = doc.get("members")
    if not isinstance(names, list) or len(names) < 2:
        raise _bad(file, f"expected 'members' to be a list of at least 2 folder names, got {names!r}")
    root = folder.resolve()
    for name in names:
        # A folder directly inside this one, never a path: a manifest must not point the loader elsewhere.
        if not isinstance(name, str) or not _MEMBER_DIR.fullmatch(name):
            raise ArtifactError(
                f"{file}: member folder {name!r} is not allowed; members are folders named member-<n> inside {folder}"
            )
        # A member-<n> symlink would still lead outside the folder.
        if not (folder / name).is_dir() or (folder / name).resolve().parent != root:
            raise ArtifactError(f"{file}: member folder {name!r} is missing from {folder}")
    if len(set(names)) != len(names):
        raise _bad(file, f"member folders are listed twice: {names}")

    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise _bad(file, f"expected 'classes' to be a non-empty list of strings, got {classes!r}")
    weights = doc.get("weights")
    if (
        not isinstance(weights, list)
        or len(weights) != len(names)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights)
        or not all(math.isfinite(v) and v >= 0 for v in weights)
        or abs(sum(weights) - 1.0) > 1e-6
    ):
        raise _bad(file, f"expected 'weights' to be {len(names)} non-negative numbers summing to 1, got {weights!r}")
    params = doc.get("params")
    if (
        not isinstance(params, dict)
        or params.get("calibration") not in CALIBRATIONS
        or not (params.get("weights") is None or isinstance(params.get("weights"), list))
    ):
        raise _bad(file, f"bad 'params' {params!r}")
    fit_info = doc.get("fit_info", {})
    if not isinstance(fit_info, dict):
        raise _bad(file, f"expected 'fit_info' to be an object, got {type(fit_info).__name__}")
    return {
        "members": names,
        "classes": classes,
        "weights": weights,
        "calibrator": TemperatureScaler.from_dict(doc.get("calibrator", {})),  # ArtifactError on a bad dict
        "params": {"weights": params.get("weights"), "calibration": params["calibration"]},
        "fit_info": fit_info,
        "priors": check_saved_priors(doc.get("priors"), len(classes), where=f"{file}: "),
    }

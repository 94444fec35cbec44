"""The pure layer imports without torch, transformers, scikit-learn, scipy or pandas (DESIGN.md §3)."""

from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "classlm",
    "classlm.metrics",
    "classlm.calibration",
    "classlm.calibrators",
    "classlm.priors",
    "classlm.out_of_scope",
    "classlm.multilabel",
    "classlm.fields",
    "classlm.thresholds",
    "classlm.feature_distance",
    "classlm.multilabel_outputs",
    "classlm.class_priors",
    "classlm.labels",
    "classlm.prompts",
    "classlm.reports",
    "classlm.config",
    "classlm.data",
    "classlm.scores",
    "classlm.io",
    # What machine this is and the dtype it picks: read from /proc, torch asked only without it.
    "classlm.machine",
    # The method contract and registry: a method's description is data (the shipped methods load on first lookup).
    "classlm.methods",
    "classlm.methods.base",
    "classlm.readers",
    "classlm.label_files",
    # A remote-model client and the HTTP layer need no local model: they must not pull torch in either.
    "classlm.backends.openai",
    "classlm.serving",
    # Nor the command line before a verb runs (`classlm --help` answers at once), nor what decides a verb's target.
    "classlm.cli",
    "classlm.targets",
]
HEAVY = ["torch", "transformers", "sklearn", "scipy", "pandas"]


def test_pure_layer_imports_without_heavy_dependencies():
    code = (
        "import sys\n"
        f"import {', '.join(PURE_MODULES)}\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, f'pure layer pulled in {loaded}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_public_names_stay_what_they_are_after_every_submodule_is_imported():
    # Importing a submodule sets it as an attribute of the package: a module named like a public function
    # (classlm/evaluate.py beside classlm.evaluate()) replaced the function once the CLI had imported it.
    import importlib
    import inspect
    import pkgutil

    import classlm

    for info in pkgutil.walk_packages(classlm.__path__, "classlm."):
        if info.name != "classlm.__main__":
            importlib.import_module(info.name)
    for name in classlm.__all__:
        assert not inspect.ismodule(getattr(classlm, name)), name
    from classlm import evaluate

    assert callable(evaluate) and evaluate.__module__ == "classlm.evaluation"

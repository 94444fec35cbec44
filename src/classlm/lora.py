"""LoRA adapters on the causal LM: fresh ones for training (seeded), saved ones (peft's own format) for loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from classlm.config import LoraConfig
from classlm.errors import ArtifactError, ConfigError
from classlm.kernels import quiet_peft_deprecation, use_fast_lora


def add_lora(model: Any, config: LoraConfig, seed: int) -> Any:
    """Wrap ``model`` with fresh LoRA adapters (seeded init); only the adapters are trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if not isinstance(targets, str) and not set(targets) & names:
        raise ConfigError(
            f"none of the LoRA target_modules {targets} is a layer of {type(model).__name__}; pick from its linear "
            "layers (e.g. q_proj, v_proj) or use target_modules='all-linear'"
        )
    torch.manual_seed(seed)
    quiet_peft_deprecation()
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    # Eval mode, as every classlm model outside the training loop: get_peft_model leaves LoRA dropout active, which
    # would make scoring random and draw from the RNG that a resumed run must replay exactly.
    return use_fast_lora(get_peft_model(model, peft_config)).eval()


def load_adapter(model: Any, folder: Path, base_name: str) -> Any:
    """A saved peft adapter on ``model``, in eval mode; refused clearly when it does not fit this base model."""
    from peft import PeftModel

    quiet_peft_deprecation()
    try:
        return use_fast_lora(PeftModel.from_pretrained(model, str(folder))).eval()
    except (ValueError, KeyError, RuntimeError) as exc:  # e.g. weights shaped for another base model
        raise ArtifactError(
            f"{folder}: peft cannot put this adapter on {base_name!r} ({type(exc).__name__}: {str(exc)[:300]}); "
            "load the run with the base model it was trained on"
        ) from exc

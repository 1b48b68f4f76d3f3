"""Tiny random-weight diffusers pipelines of every family, built offline from configs.

They load back through the same `from_pretrained` path as a real checkpoint, so a fresh machine can
serve, test and benchmark every family without downloading a single weight. Each family's builder lives in its
module (`FamilyParts.tiny`); the tokenizers and text encoder they share are here.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.families import FAMILIES

# Words the tiny tokenizers know whole; anything else falls back to single characters.
_WORDS = (
    "a the of and in on with at to from by cat dog bird fish horse robot car city forest ocean river mountain "
    "sky sun moon night day rain snow fire light dark red blue green yellow white black small big slow fast "
    "running walking flying swimming dancing video camera scene view close wide shot beautiful old new man "
    "woman child street house tree flower field beach wave cloud storm space star planet"
).split()

# Components are built under this seed so a rebuilt directory holds the same weights.
_SEED = 0


def build_tiny_models(out_dir: Path, families: list[str] | None = None) -> dict[str, Path]:
    """Build (or keep, when already complete) a tiny pipeline of each family under `out_dir/<family>`.

    Returns the family -> directory map. A directory counts as complete once its `model_index.json`
    exists: it is written last, after every component.
    """
    return build_models(out_dir, families, size="tiny")


def build_models(out_dir: Path, families: list[str] | None = None, size: str = "tiny") -> dict[str, Path]:
    """Like `build_tiny_models`, at a chosen size: "tiny" (test configs) or "small" (a few million
    parameters per transformer, compute-bound on a CPU; the benchmark's second size)."""
    if size not in ("tiny", "small"):
        raise ValueError(f"unknown size {size!r}; known: tiny, small")
    out_dir = Path(out_dir)
    builders = {name: build for family in FAMILIES.values() for name, build in family.parts.tiny.items()}
    built: dict[str, Path] = {}
    for name in families or list(FAMILIES):
        if name not in builders:
            raise ValueError(f"unknown model family {name!r}; known: {', '.join(builders)}")
        target = out_dir / name
        if not (target / "model_index.json").is_file():
            _save_atomically(functools.partial(builders[name], size == "small"), target)
        built[name] = target
    return built


def _save_atomically(build: Callable[[], Any], target: Path) -> None:
    """Save into a sibling temp directory and rename, so a crash never leaves a half-written model."""
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staging = Path(tmp) / target.name
        with torch.random.fork_rng():
            torch.manual_seed(_SEED)
            pipe = build()
        pipe.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier attempt
        staging.rename(target)


# --- tokenizers, from in-memory vocabularies -------------------------------------------------------


def t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [f"▁{w}" for w in _WORDS]
    pieces += list(string.ascii_lowercase + string.digits + ".,!?'-")
    pieces += [f"▁{c}" for c in string.ascii_lowercase + string.digits]
    vocab = [(p, 0.0 if i < 3 else -float(i) / 10) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def llama_tokenizer() -> Any:
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for c in string.ascii_letters + string.digits + ".,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(f"▁{c}", len(vocab))
    merges = [("▁", c) for c in string.ascii_letters + string.digits]
    return LlamaTokenizer(vocab=vocab, merges=merges, pad_token="<pad>")


def clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(f"{c}</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[])


def t5_encoder(tokenizer: Any, small: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=256 if small else 32,
        d_ff=1024 if small else 37,
        d_kv=64 if small else 8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def describe(path: Path) -> dict[str, Any]:
    """The component classes of a saved pipeline (for `vidserve models list` style output)."""
    return json.loads((Path(path) / "model_index.json").read_text())

"""The prompt embeddings an engine encoded lately: an LRU in front of the family's text encoder.

Repeated prompts (above all the empty negative prompt) are encoded once, new ones in one batched call, and the
cache never grows past its capacity.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from engine.families.base import FamilyAdapter, TextEmbedding


class TextCache:
    """An LRU of prompt embeddings over the adapter's `encode_prompts` (looked up at each call: benchmarks time it).

    Keyed by model, encoding settings and prompt (`settings`), so an embedding is never served to a model or a
    sequence length it was not encoded for, even if the cache came to be shared. Capacity 0 turns it off.
    """

    def __init__(self, adapter: FamilyAdapter, capacity: int, settings: tuple = ()) -> None:
        self.adapter = adapter
        self.capacity = capacity
        self.settings = settings
        self._entries: OrderedDict[tuple, TextEmbedding] = OrderedDict()

    def get(self, prompt: str) -> TextEmbedding | None:
        key = (*self.settings, prompt)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, prompt: str, value: TextEmbedding) -> None:
        if self.capacity <= 0:
            return
        key = (*self.settings, prompt)
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def encode(self, prompts: Iterable[str]) -> dict[str, TextEmbedding]:
        """Every prompt's embedding: cached ones as they are, the others in one batched call (each prompt once)."""
        found: dict[str, TextEmbedding] = {}
        needed: list[str] = []
        for prompt in prompts:
            if prompt in found or prompt in needed:
                continue
            hit = self.get(prompt)
            if hit is None:
                needed.append(prompt)
            else:
                found[prompt] = hit
        if needed:
            for prompt, value in zip(needed, self.adapter.encode_prompts(needed), strict=True):
                self.put(prompt, value)
                found[prompt] = value
        return found

    def embedding(self, prompt: str) -> TextEmbedding:
        """One prompt's embedding, encoded again if it was evicted since."""
        return self.encode([prompt])[prompt]

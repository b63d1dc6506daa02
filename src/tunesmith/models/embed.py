"""Sentence embeddings with the bundled all-MiniLM-L6-v2: mean-pooled and unit length."""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

EMBEDDING_MODEL = "minilm-l6"


class Embedder:
    """Texts to unit vectors (384 dimensions for MiniLM); load once, encode many times."""

    def __init__(self, model: str = EMBEDDING_MODEL, max_length: int = 256) -> None:
        from tunesmith.models import load_model

        loaded = load_model(model, head="feature-extraction")
        self.model: Any = loaded.model.eval()
        self.tokenizer: Any = loaded.tokenizer
        self.max_length = max_length
        self._lock = threading.Lock()  # a fast tokenizer refuses concurrent calls ("Already borrowed")
        self._kept: collections.OrderedDict[str, tuple[int, np.ndarray]] = collections.OrderedDict()

    def encode_kept(self, key: str, texts: Sequence[str], most: int = 16) -> np.ndarray:
        """`encode(texts)`, kept under `key` for the next call with the same key and texts (the training
        prompts of a served version, compared at every drift check); the `most` latest keys are kept."""
        fingerprint = hash(tuple(texts))
        kept = self._kept.get(key)
        if kept is not None and kept[0] == fingerprint:
            self._kept.move_to_end(key)
            return kept[1]
        vectors = self.encode(texts)
        self._kept[key] = (fingerprint, vectors)
        while len(self._kept) > most:
            self._kept.popitem(last=False)
        return vectors

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = [t or " " for t in texts[start : start + batch_size]]
                encoded = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

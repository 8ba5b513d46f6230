"""`Embedder`: a sentence-transformers model behind the on-disk cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from metakl.embed.cache import EmbeddingCache, text_key
from metakl.errors import UserError

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
# bfloat16 where the CPU computes it natively (AMX / AVX512-BF16), float32 elsewhere (emulated bf16 is ~3x slower):
# on this project's 2-core AMX machine bfloat16 embeds MiniLM 1.8-4x faster (it varies with the load), every vector
# at cosine >= 0.9998 to float32 (benchmarks/embed_speed.py, README "Embedding speed"). The dtype is part of the cache
# identity, so vectors of the two never mix.
DEFAULT_EMBEDDING_DTYPE = "auto"
# texts per model call between cache commits, progress updates and giving freed heap back (a kill loses at most one
# chunk; at 15-60 texts/s on 2 busy cores 512 texts are 10-35 s, about one progress line's interval)
_ENCODE_CHUNK = 512
_EDGE = 1 << 20  # bytes hashed at each end of a weights file for its identity


def encode_order(texts: list[str]) -> list[str]:
    """The distinct texts in the order they are encoded: longest first, then by text (sentence-transformers sorts a
    call's texts by length; we fix the rest). A vector depends on its batch-mates (the batch is padded to its longest
    text, and in bfloat16 the padded shapes round differently: up to ~1e-3 per coordinate, enough to move a tag
    across the embedding tagger's floor), so the batches must not depend on the input's order or on how an executor
    splits it: every executor encodes this order in chunks of _ENCODE_CHUNK from its start (RayExecutor.embed cuts
    its blocks at multiples of it), and the same texts to encode give the same batches, hence the same vectors."""
    return sorted(set(texts), key=lambda t: (-len(t), t))


def release_freed_heap() -> None:
    """Give the heap pages freed since the last call back to the system (glibc's malloc_trim; nothing where the C
    library has no such call). Why: glibc raises its mmap threshold after the first large free, so torch's activations
    (up to ~25 MB a batch) then come from the heap and stay there, fragmented, after they are freed: decontaminate's
    full-size benchmark (64K texts cold) grew to 2.02 GB, 1.54 GB with a trim after each chunk of 512 texts."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (find_library may read the linker cache or run a compiler), or None where
    the C library has no such call (macOS, musl, Windows: their allocators differ)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


@dataclass
class EmbedStats:
    texts: int = 0  # texts asked for (with repeats)
    distinct: int = 0  # distinct texts among them
    encoded: int = 0  # texts the model encoded
    cache_hits: int = 0  # distinct texts served from the cache

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _folder_identity(folder: Path) -> str:
    """A digest of a model folder: small files whole, weight files by size and their first and last MiB."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = path.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 2 * _EDGE:
                h.update(f.read())
            else:
                h.update(f.read(_EDGE))
                f.seek(-_EDGE, 2)
                h.update(f.read(_EDGE))
    return h.hexdigest()[:16]


class Embedder:
    """Normalized float32 sentence embeddings (embedded model name, folder or Hub id), cached on disk.

    `max_seq_length`: tokens per text (None: the model's own limit); `dtype`: the compute dtype: auto (default:
    bfloat16 on CPUs with native bfloat16, else float32; `dtype_reason` says which and why), float32 or bfloat16;
    vectors come out float32 whatever it is; `cache_dir`: the cache folder (None: the user cache; False: no cache).
    """

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, *, max_seq_length: int | None = None, batch_size: int = 64,
                 dtype: str = DEFAULT_EMBEDDING_DTYPE, device: str | None = None, cache_dir: str | Path | bool | None = None,
                 num_threads: int | None = None) -> None:
        from metakl.hardware import auto_dtype, resolve_dtype
        from metakl.llm.models import check_model_name, resolve_embedding_model

        check_model_name(model)
        self.name = model
        self.batch_size = batch_size
        on = device or "cpu"  # the model runs on the CPU unless told otherwise, even where a GPU is present
        self.dtype = resolve_dtype(dtype, on, announce=False)
        self.dtype_reason = str(auto_dtype(on)) if dtype in (None, "auto") else f"{self.dtype} (asked for)"
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            path = resolve_embedding_model(model)
            self.model = SentenceTransformer(path, device=device or "cpu",
                                             model_kwargs={"dtype": getattr(torch, self.dtype)})
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load embedding model '{model}': {str(exc).splitlines()[0] if str(exc) else exc}") from None
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(dim())
        weights = _folder_identity(Path(path)) if Path(path).is_dir() else path
        # Everything that changes the vectors: a float32 and a bfloat16 vector of one text never share a cache entry.
        self.identity = json.dumps({"model": weights, "max_seq_length": self.model.max_seq_length, "dtype": self.dtype,
                                    "normalized": True}, sort_keys=True)
        if cache_dir is False:
            self.cache = None
        else:
            if cache_dir in (None, True):
                from metakl.llm.models import cache_root

                cache_dir = cache_root()
            self.cache = EmbeddingCache(cache_dir)
        self.stats = EmbedStats()
        self._threads = num_threads
        self._on_cpu = (device or "cpu") == "cpu"

    @property
    def num_threads(self) -> int | None:
        """torch threads for the next call: the ones given, else the project's rule read now (metakl.hardware:
        OMP_NUM_THREADS, 1 beside a local vLLM server, the decision of the run or verb under way, else the cores
        not busy). Read at each call, not at loading: a process keeps one Embedder (load_embedder) across runs."""
        from metakl.hardware import torch_threads

        return self._threads or (torch_threads() if self._on_cpu else None)

    def shorten(self, texts: list[str], head_share: float = 1 / 3) -> list[str]:
        """`texts`, each cut to the model's token limit in the middle rather than at the end: a longer text keeps its
        first `head_share` of the budget and its last tokens, joined by " ... ". Prompts put the passage first and the
        question and options last (LogiQA, MMLU reading items), so cutting the end would make different questions on
        the same passage embed the same. Needs a fast tokenizer (offsets); otherwise texts are returned unchanged."""
        texts = list(texts)
        tok = getattr(self.model, "tokenizer", None)
        limit = self.model.max_seq_length
        if tok is None or not limit or not getattr(tok, "is_fast", False):
            return texts
        budget = max(8, limit - 2 - 3)  # [CLS]/[SEP] (or <s></s>) and the " ... " marker
        # A text has at most as many tokens as UTF-8 bytes (WordPiece, byte-level BPE, byte-fallback SentencePiece).
        long = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > budget]
        for start in range(0, len(long), 1024):
            chunk = long[start : start + 1024]
            enc = tok([texts[i] for i in chunk], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            for i, offsets in zip(chunk, enc["offset_mapping"]):
                if len(offsets) <= budget:
                    continue
                head = max(1, int(budget * head_share))
                tail = budget - head
                text = texts[i]
                texts[i] = text[: offsets[head - 1][1]] + " ... " + text[offsets[len(offsets) - tail][0] :]
        return texts

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        before = torch.get_num_threads()
        threads = self.num_threads
        if threads:
            torch.set_num_threads(threads)
        try:
            emb = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    show_progress_bar=False, convert_to_numpy=True)
        finally:
            torch.set_num_threads(before)
        emb = np.asarray(emb, dtype=np.float32)
        # Normalized in bfloat16 a row's norm is 1 only to ~1e-3: normalize again in float32.
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def __call__(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Unit vectors for `texts` (float32, [len(texts), dimension]), each distinct text encoded at most once."""
        texts = list(texts)
        self.stats.texts += len(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        positions: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            positions.setdefault(t, []).append(i)
        distinct = list(positions)
        self.stats.distinct += len(distinct)
        keys = [text_key(t) for t in distinct]
        found = self.cache.get_many(self.identity, keys, self.dimension) if self.cache is not None else {}
        self.stats.cache_hits += len(found)
        from metakl.progress import bar as progress_bar

        bar = progress_bar(len(distinct), f"embed {self.name}", "texts", enabled=progress, initial=len(found))
        try:
            for t, k in zip(distinct, keys):
                if k in found:
                    out[positions[t]] = found[k]
            key_of = dict(zip(distinct, keys))
            missing = [(t, key_of[t]) for t in encode_order([t for t, k in key_of.items() if k not in found])]
            for start in range(0, len(missing), _ENCODE_CHUNK):
                chunk = missing[start : start + _ENCODE_CHUNK]
                vectors = self._encode([t for t, _ in chunk])
                release_freed_heap()
                self.stats.encoded += len(chunk)
                if self.cache is not None:
                    self.cache.put_many(self.identity, [k for _, k in chunk], vectors)
                for (t, _), v in zip(chunk, vectors):
                    out[positions[t]] = v
                bar.update(len(chunk))
        finally:
            bar.close()
        return out


def load_embedder(model: str = DEFAULT_EMBEDDING_MODEL, max_seq_length: int | None = None, batch_size: int = 64,
                  dtype: str = DEFAULT_EMBEDDING_DTYPE, cache_dir: str | None = None) -> Embedder:
    """A shared Embedder per (model, settings, cache folder) in this process (loading a model takes seconds)."""
    # every argument spelled out, so annotate's `load_embedder(m, 128)` and dedup's `(m, 128, 64, "auto", None)`
    # share one model in memory
    return _load_embedder(model, max_seq_length, batch_size, dtype, cache_dir)


@lru_cache(maxsize=4)
def _load_embedder(model: str, max_seq_length: int | None, batch_size: int, dtype: str,
                   cache_dir: str | None) -> Embedder:
    return Embedder(model, max_seq_length=max_seq_length, batch_size=batch_size, dtype=dtype, cache_dir=cache_dir)


load_embedder.cache_clear = _load_embedder.cache_clear  # type: ignore[attr-defined]  # as lru_cache's (tests)

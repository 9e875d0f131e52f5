"""Exact and near-duplicate detection that streams: memory grows only with the index.

Exact duplicates share the 64-bit hash of their normalized text. Near duplicates share a MinHash
LSH band over word trigrams. Signatures are computed for a whole batch at once with numpy
(multiply-shift hashing, the high 32 bits of a*h+b), which is what makes 10^4+ records/s possible
in Python; only the band keys are kept (one int per band per kept record), never the signatures.
The band/row split comes from datasketch, which picks it to balance false positives and negatives
at the threshold.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import xxhash

from include.validation import Rule

_NON_WORD = re.compile(r"[\W_]+")
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xC2B2AE3D27D4EB4F)
_FNV = np.uint64(0x100000001B3)
# Records a signature block hashes at once: their (shingles x perms) uint64 block, about 1 MiB for
# 1 KB records, stays in cache (measured: a third faster than 128 records a block).
_BLOCK = 16


# The regex below as a bytes.translate table for UTF-8, one C pass: ASCII letters lowered, every
# other ASCII byte but a digit (underscore included) made a space, the bytes of non-ASCII
# characters kept; then the runs of spaces collapse.
_WORD_BYTES = bytes(c + 32 if 65 <= c <= 90 else c if c >= 128 or chr(c).isalnum() else 32 for c in range(256))
_ASCII = bytes(range(128))


def normalize_for_dedup(text: str) -> str:
    """Case, punctuation and spacing do not make two records different."""
    return normalized_utf8(text).decode()


def normalized_utf8(text: str) -> bytes:
    """`normalize_for_dedup(text)` in UTF-8, what the hashes take, without the round trip via str.

    Casefolded text goes through `_WORD_BYTES` when each of its non-ASCII characters (found by
    deleting the ASCII bytes; few in most text) is a word character, which the regex keeps too.
    """
    if text.isascii():
        words = text.encode().translate(_WORD_BYTES)
    else:
        text = text.casefold()
        words = text.encode("utf-8", "surrogatepass")  # JSON can carry a lone surrogate
        others = words.translate(None, _ASCII).decode("utf-8", "surrogatepass")
        if others and not others.isalnum():
            return _NON_WORD.sub(" ", text).strip().encode()
        words = words.translate(_WORD_BYTES)
    return _single_spaced(words).strip()


def _single_spaced(words: bytes) -> bytes:
    """Every run of spaces in `words` made one. Punctuation before a space (". ", ", ") leaves runs of
    two in most texts: one split and join mends all of them in a single scan, unless a piece shows
    a longer run (it is empty, or it starts with a space), which the loop then collapses."""
    pieces = words.split(b"  ")
    if len(pieces) == 1:
        return words
    words = b" ".join(pieces)
    if b"" in pieces or any(p[:1] == b" " for p in pieces):
        while b"  " in words:  # each pass at least halves every run of spaces
            words = words.replace(b"  ", b" ")
    return words


def content_hash(normalized: str | bytes) -> int:
    """The exact-dedup key of a normalized text (str, or its UTF-8 bytes)."""
    if isinstance(normalized, str):
        normalized = normalized.encode()
    return xxhash.xxh3_64_intdigest(normalized)


class ExactDeduplicator:
    def __init__(self) -> None:
        self._seen: set[int] = set()

    def is_duplicate(self, normalized: str) -> bool:
        key = content_hash(normalized)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False


@lru_cache(maxsize=16)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that minimise weighted false positives and negatives at `threshold`."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class NearDuplicateIndex:
    """MinHash LSH over word trigrams; the first record of a near-duplicate cluster is kept."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, seed: int = 1):
        Rule("dedup threshold", "number", 0.0, 1.0, open_low=True, error=ValueError).check(threshold)
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        self._a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self._band_tag = np.arange(self.bands, dtype=np.uint64) << np.uint64(56)
        self._seen: set[int] = set()

    def signatures(self, texts: list[str] | list[bytes]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures of normalized texts (str or UTF-8)."""
        texts = [t.encode() if isinstance(t, str) else t for t in texts]
        token_hashes: list[int] = []
        counts = np.empty(len(texts), dtype=np.int64)
        h = xxhash.xxh64_intdigest
        for i, text in enumerate(texts):
            tokens = text.split() or [b""]
            token_hashes.extend(map(h, tokens))
            counts[i] = len(tokens)
        t = np.fromiter(token_hashes, dtype=np.uint64, count=len(token_hashes))
        with np.errstate(over="ignore"):
            # trigram hash at every position; positions that would cross a record are never read
            tri = np.empty_like(t)
            tri[:-2] = (t[:-2] * _M1) ^ (t[1:-1] * _M2) ^ t[2:]
            tri[-2:] = t[-2:]
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        n_shingles = np.maximum(counts - 2, 1)  # records under three tokens: one "shingle" of its first
        idx = np.repeat(starts, n_shingles) + _ranges(n_shingles)
        offsets = np.concatenate(([0], np.cumsum(n_shingles)[:-1]))
        shingles = tri[idx]
        for i in np.flatnonzero(counts < 3):  # hash a short record whole, so "a b" != "a"
            shingles[offsets[i]] = xxhash.xxh64_intdigest(texts[i])
        out = np.empty((len(texts), len(self._a)), dtype=np.uint32)
        buffer = np.empty(0, dtype=np.uint64)  # one block's (shingles x perms), reused: no temporaries
        for lo in range(0, len(texts), _BLOCK):
            hi = min(lo + _BLOCK, len(texts))
            first, last = offsets[lo], offsets[hi] if hi < len(texts) else len(shingles)
            if buffer.size < (last - first) * len(self._a):
                buffer = np.empty((last - first) * len(self._a), dtype=np.uint64)
            block = buffer[: (last - first) * len(self._a)].reshape(last - first, len(self._a))
            with np.errstate(over="ignore"):
                np.multiply(shingles[first:last, None], self._a, out=block)
                np.add(block, self._b, out=block)
                np.right_shift(block, np.uint64(32), out=block)
            np.minimum.reduceat(block, offsets[lo:hi] - first, axis=0, out=out[lo:hi])
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        sig = signatures[:, : self.bands * self.rows].astype(np.uint64).reshape(len(signatures), self.bands,
                                                                                 self.rows)
        keys = np.zeros((len(signatures), self.bands), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                keys = (keys * _FNV) ^ sig[:, :, j]
        return (keys >> np.uint64(8)) ^ self._band_tag

    def keys(self, texts: list[str] | list[bytes]) -> np.ndarray:
        """(len(texts), bands) band keys of normalized texts (str or UTF-8); depends on nothing indexed, so it can
        be computed elsewhere (in a worker process) and passed to `add_keys`."""
        if not texts:
            return np.empty((0, self.bands), dtype=np.uint64)
        return self.band_keys(self.signatures(texts))

    def add_batch(self, texts: list[str]) -> list[bool]:
        """For each normalized text in order: True if it near-duplicates one already indexed."""
        return self.add_keys(self.keys(texts).tolist())

    def add_keys(self, keys: list[list[int]]) -> list[bool]:
        """`add_batch` for band keys from `keys`."""
        seen = self._seen
        flags = []
        for row in keys:
            if any(k in seen for k in row):
                flags.append(True)
            else:
                seen.update(row)
                flags.append(False)
        return flags


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated arange(n) for each n in lengths, without a Python loop."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    out = np.ones(total, dtype=np.int64)
    out[0] = 0
    out[ends[:-1]] = 1 - lengths[:-1]
    return np.cumsum(out)

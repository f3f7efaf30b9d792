"""Hashed n-grams of words or characters: the shingles of near-duplicate detection and the
units of the leakage check.

Text is compared in a spelling-blind-enough form: lowercased, and for words only runs of
letters and digits (punctuation and line breaks do not matter). Each n-gram becomes one
64-bit hash that is the same in every process and run, computed with numpy for all
positions of a document at once.
"""

from __future__ import annotations

import numpy as np

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_INVERSE = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_ASCII_ALNUM = np.array([chr(c).isalnum() for c in range(128)])
_ASCII_SPACE = np.array([chr(c).isspace() for c in range(128)])


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_class(codes: np.ndarray, ascii_table: np.ndarray, test) -> np.ndarray:
    """Which code points pass `test` (str.isalnum, str.isspace): a table for ASCII, the test
    itself once per distinct other character."""
    if codes.max(initial=0) < 128:
        return ascii_table[codes]
    out = np.zeros(len(codes), dtype=bool)
    is_ascii = codes < 128
    out[is_ascii] = ascii_table[codes[is_ascii]]
    if not is_ascii.all():
        others = np.unique(codes[~is_ascii])
        out[~is_ascii] = np.isin(codes[~is_ascii], others[[test(chr(c)) for c in others.tolist()]])
    return out


def is_alnum(codes: np.ndarray) -> np.ndarray:
    return char_class(codes, _ASCII_ALNUM, str.isalnum)


def is_space(codes: np.ndarray) -> np.ndarray:
    return char_class(codes, _ASCII_SPACE, str.isspace)


def word_units(text: str) -> np.ndarray:
    """One 64-bit hash per word (a run of letters or digits, as str.isalnum says), lowercased.

    All words at once with numpy: with prefix sums S[k] = sum of code[i] * M**i for i < k, the
    word [s, e) hashes to (S[e] - S[s]) * M**-s = sum of code[s + j] * M**j, which depends on the
    word alone, not on where it stands (arithmetic modulo 2**64, M odd so M**-1 exists)."""
    codes = code_points(text.lower())
    edges = np.diff(is_alnum(codes).astype(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([np.uint64(0)], np.cumsum(codes * powers(_MULTIPLIER, len(codes)))))
        return mix64((prefix[ends] - prefix[starts]) * powers(_INVERSE, len(codes))[starts])


def powers(base: np.uint64, n: int) -> np.ndarray:
    """base**0, base**1, ... base**(n-1) modulo 2**64."""
    steps = np.full(n, base, dtype=np.uint64)
    steps[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(steps, dtype=np.uint64)


def char_units(text: str) -> np.ndarray:
    """One code point per character, lowercased, with every run of whitespace as one space."""
    return code_points(" ".join(text.lower().split())).astype(np.uint64)


def ngram_hashes(units: np.ndarray, n: int) -> np.ndarray:
    """A hash of each run of n consecutive units; a text shorter than n is one n-gram of all of it."""
    n = min(n, len(units))
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    count = len(units) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULTIPLIER + units[k:k + count]
    return mix64(h)


def mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit moves every output bit, so low bits can sample."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> np.uint64(33))
        h = h * np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))


def word_bounds(text: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Where each word of `word_units(text)` starts and ends in the text (character offsets), or
    None for a text whose lowercase form has another length (a few letters, like 'İ', lowercase
    to two code points), where offsets in one are not offsets in the other."""
    lowered = text.lower()
    if len(lowered) != len(text):
        return None
    edges = np.diff(is_alnum(code_points(lowered)).astype(np.int8), prepend=0, append=0)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)

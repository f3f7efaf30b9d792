"""Cleaning: text transforms that repair and normalise, then filters that drop a document.

Each transform and each filter can be switched off or tuned in `data.clean`; the prepare
step counts, per transform, the documents it changed and the characters it removed, and
per filter the documents it dropped, with the measured value that failed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import ftfy
import numpy as np

from lightning_llm.data.ngrams import code_points, is_alnum, is_space

# Project Gutenberg wraps each book in a header and a licence. The markers have changed
# over the years ("*** START OF THIS PROJECT GUTENBERG EBOOK", "*END*THE SMALL PRINT!",
# "End of the Project Gutenberg EBook"), so match their stable parts.
_GUTENBERG_START = re.compile(r"\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG|\*END\*THE SMALL PRINT", re.IGNORECASE)
_GUTENBERG_END = re.compile(r"\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg",
                            re.IGNORECASE)
_LICENCE_BLOCK = re.compile(
    r"<<THIS ELECTRONIC VERSION OF.*?>>|\*\*\*The Project Gutenberg'?s Etext.*?\*\*\*",
    re.IGNORECASE | re.DOTALL)
# C0 controls but tab and newlines, DEL, C1 controls, zero-width and direction marks, BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
# Only repair what was broken in transit (mojibake, C1 controls, surrogates): leave quotes,
# ligatures, widths and HTML entities as the author wrote them; normalisation is its own step.
_FTFY = ftfy.TextFixerConfig(unescape_html=False, remove_terminal_escapes=False, fix_latin_ligatures=False,
                             fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
                             remove_control_chars=False, normalization=None, explain=False)
UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
TRANSFORMS = ("fix_unicode", "strip_gutenberg", "unicode_form", "strip_control", "normalize_whitespace",
              "lowercase")


@dataclass
class CleanConfig:
    fix_unicode: bool = True  # ftfy: repair mojibake and broken encodings
    strip_gutenberg: bool = True  # Project Gutenberg headers, licences and inline notices
    unicode_form: str | None = "NFC"  # NFC | NFKC | NFD | NFKD | null (leave as is)
    strip_control: bool = True  # control, zero-width and direction-mark characters
    normalize_whitespace: bool = True  # \n line ends, no trailing spaces, at most max_blank_lines blank lines
    max_blank_lines: int = 2
    lowercase: bool = False
    # Filters (null: off). A document failing one is dropped with the reason and its value.
    min_chars: int | None = 200
    max_chars: int | None = None
    min_words: int | None = 50
    max_symbol_ratio: float | None = 0.25  # share of non-space characters that are neither letters nor digits
    min_mean_word_length: float | None = 3.0  # words split on whitespace
    max_mean_word_length: float | None = 10.0
    max_repeated_line_chars: float | None = 0.3  # share of characters in lines that repeat an earlier line

    def __post_init__(self):
        if self.unicode_form is not None and self.unicode_form not in UNICODE_FORMS:
            raise ValueError(f"data.clean.unicode_form must be one of {', '.join(UNICODE_FORMS)} or null, "
                             f"got {self.unicode_form!r}")
        if self.max_blank_lines < 0:
            raise ValueError(f"data.clean.max_blank_lines must be at least 0, got {self.max_blank_lines}")


def fix_unicode(text: str) -> str:
    """ftfy on the lines that hold non-ASCII characters: an ASCII line has nothing to repair, and
    ftfy works line by line anyway, so the result is the same at a fraction of the cost."""
    if text.isascii():
        return text
    return "".join(line if line.isascii() else ftfy.fix_text(line, _FTFY) for line in text.splitlines(keepends=True))


def strip_gutenberg(text: str) -> str:
    """Keep the lines between the Gutenberg start and end markers, minus inline licence notes."""
    kept, at = [], 0
    for start, end in gutenberg_spans(text):
        kept.append(text[at:start])
        at = end
    return "".join(kept) + text[at:]


def gutenberg_spans(text: str) -> list[tuple[int, int]]:
    """The character spans strip_gutenberg removes, in order: the header through the line of the
    last start marker, inline licence notes, and the end marker's line on. (The RAG index blanks
    them instead, keeping line numbers.)"""
    if "<<" not in text and "gutenberg" not in text.lower():  # no marker can match: skip the regexes
        return []
    begin, stop = 0, len(text)
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        line_end = text.find("\n", starts[-1].end())
        begin = line_end + 1 if line_end >= 0 else len(text)
    end = _GUTENBERG_END.search(text, begin)
    if end:
        stop = text.rfind("\n", begin, end.start()) + 1 or begin
    spans = [(0, begin)] if begin else []
    spans += [m.span() for m in _LICENCE_BLOCK.finditer(text, begin, stop)]
    return spans + ([(stop, len(text))] if stop < len(text) else [])


def strip_control(text: str) -> str:
    return _CONTROL.sub("", text)


def normalize_whitespace(text: str, max_blank_lines: int = 2) -> str:
    """Unix line endings, no trailing spaces, at most max_blank_lines blank lines in a row,
    no blank lines at either end, one final newline."""
    text = "\n".join(line.rstrip(" \t") for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    if "\n" * (max_blank_lines + 2) in text:
        text = re.sub(rf"\n{{{max_blank_lines + 2},}}", "\n" * (max_blank_lines + 1), text)
    text = text.strip("\n")
    return text + "\n" if text else ""


def transform(text: str, config: CleanConfig) -> tuple[str, dict[str, int]]:
    """The cleaned text and, for each transform that changed it, the characters it removed."""
    steps = {
        "fix_unicode": fix_unicode,
        "strip_gutenberg": strip_gutenberg,
        "unicode_form": lambda t: unicodedata.normalize(config.unicode_form, t),
        "strip_control": strip_control,
        "normalize_whitespace": lambda t: normalize_whitespace(t, config.max_blank_lines),
        "lowercase": str.lower,
    }
    changes = {}
    for name in TRANSFORMS:
        if getattr(config, name):
            cleaned = steps[name](text)
            if cleaned != text:
                changes[name] = len(text) - len(cleaned)
                text = cleaned
    return text, changes


def failed_filter(text: str, config: CleanConfig) -> tuple[str, float] | None:
    """The first filter the text fails, with the value it measured; None if it passes all."""
    def check(name, value, too_far):
        limit = getattr(config, name)
        return (name, round(float(value), 4)) if limit is not None and too_far(value, limit) else None

    below, above = (lambda v, lim: v < lim), (lambda v, lim: v > lim)
    failed = check("min_chars", len(text), below) or check("max_chars", len(text), above)
    if failed:
        return failed
    codes = code_points(text)
    space = is_space(codes)
    non_space = len(codes) - int(space.sum())
    words = int((np.diff(space.astype(np.int8), prepend=1) == -1).sum())  # runs of non-space, as str.split
    symbols = non_space - int(is_alnum(codes).sum())  # neither space nor letter nor digit
    mean_length = non_space / words if words else 0.0
    return (check("min_words", words, below)
            or check("max_symbol_ratio", symbols / max(non_space, 1), above)
            or check("min_mean_word_length", mean_length, below)
            or check("max_mean_word_length", mean_length, above)
            or check("max_repeated_line_chars", repeated_line_chars(text), above))


def repeated_line_chars(text: str) -> float:
    """Share of the characters of non-blank lines that sit in a line seen earlier in the text."""
    seen: set[str] = set()
    total = repeated = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return repeated / total if total else 0.0

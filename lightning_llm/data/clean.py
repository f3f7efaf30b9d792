"""Cleaning steps: each takes a text and returns the cleaned text (or None to drop it)."""

from __future__ import annotations

import re
import unicodedata

# Project Gutenberg wraps each book in a header and a licence. The markers have changed
# over the years ("*** START OF THIS PROJECT GUTENBERG EBOOK", "*END*THE SMALL PRINT!",
# "End of the Project Gutenberg EBook"), so match their stable parts.
_GUTENBERG_START = re.compile(
    r"^.*(\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG|\*END\*THE SMALL PRINT|"
    r"\*\*\*\s*START OF THE PROJECT GUTENBERG).*$", re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(
    r"^.*(\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
    re.IGNORECASE | re.MULTILINE)
_LICENCE_BLOCK = re.compile(
    r"<<THIS ELECTRONIC VERSION OF.*?>>|\*\*\*The Project Gutenberg'?s Etext.*?\*\*\*",
    re.IGNORECASE | re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u2060\ufeff]")


def strip_gutenberg(text: str) -> str:
    """Keep what lies between the Gutenberg start and end markers, minus inline licence notes."""
    starts = list(_GUTENBERG_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return _LICENCE_BLOCK.sub("", text)


def normalize(text: str, form: str = "NFC") -> str:
    """One encoding of each character, Unix line endings, no control or zero-width characters,
    no trailing spaces, and at most two blank lines in a row."""
    text = unicodedata.normalize(form, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n") + "\n"

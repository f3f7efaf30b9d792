from lightning_llm.data.clean import normalize, strip_gutenberg

GUTENBERG = """The Project Gutenberg EBook of Hamlet, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET. To be, or not to be, that is the question.

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

***** This file should be named 1524.txt *****
Section 1.  General Terms of Use and Redistributing Project Gutenberg-tm
"""


def test_strip_gutenberg_keeps_the_text_and_drops_header_and_licence():
    text = strip_gutenberg(GUTENBERG)
    assert "To be, or not to be" in text
    assert "Gutenberg" not in text
    assert "no restrictions" not in text and "Redistributing" not in text


def test_strip_gutenberg_drops_inline_licence_notes():
    text = "ACT I.\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993>>\nEnter Ghost.\n"
    assert strip_gutenberg(text) == "ACT I.\n\nEnter Ghost.\n"


def test_strip_gutenberg_leaves_plain_text_alone():
    assert strip_gutenberg("ROMEO.\nBut soft!\n") == "ROMEO.\nBut soft!\n"


def test_normalize_line_endings_unicode_and_invisible_characters():
    decomposed = "Cafe\u0301\r\nzero\u200bwidth  \r\n\n\n\n\n\nend"
    assert normalize(decomposed, "NFC") == "Caf\u00e9\nzerowidth\n\n\nend\n"
    assert normalize("\ufb01ne", "NFKC") == "fine\n"

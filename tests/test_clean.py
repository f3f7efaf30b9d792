import pytest

from lightning_llm.data.clean import (
    CleanConfig,
    failed_filter,
    fix_unicode,
    normalize_whitespace,
    repeated_line_chars,
    strip_control,
    strip_gutenberg,
    transform,
)

GUTENBERG = """The Project Gutenberg EBook of Hamlet, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET. To be, or not to be, that is the question.

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

***** This file should be named 1524.txt *****
Section 1.  General Terms of Use and Redistributing Project Gutenberg-tm
"""
PROSE = ("Now is the winter of our discontent made glorious summer by this sun of York; "
         "and all the clouds that lour'd upon our house in the deep bosom of the ocean buried.\n")
ALL_OFF = dict(fix_unicode=False, strip_gutenberg=False, unicode_form=None, strip_control=False,
               normalize_whitespace=False, lowercase=False, min_chars=None, min_words=None, max_symbol_ratio=None,
               min_mean_word_length=None, max_mean_word_length=None, max_repeated_line_chars=None)


def test_strip_gutenberg_keeps_the_text_and_drops_header_and_licence():
    text = strip_gutenberg(GUTENBERG)
    assert "To be, or not to be" in text
    assert "Gutenberg" not in text
    assert "no restrictions" not in text and "Redistributing" not in text


def test_strip_gutenberg_drops_inline_licence_notes_and_leaves_plain_text_alone():
    text = "ACT I.\n<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993>>\nEnter Ghost.\n"
    assert strip_gutenberg(text) == "ACT I.\n\nEnter Ghost.\n"
    assert strip_gutenberg("ROMEO.\nBut soft!\n") == "ROMEO.\nBut soft!\n"


def test_fix_unicode_repairs_mojibake_and_leaves_intended_characters():
    assert fix_unicode("The Merchant of Veniceâ€™s caf\u00c3\u00a9") == "The Merchant of Venice\u2019s caf\u00e9"
    kept = "\u201cCurly quotes\u201d, \ufb01 ligature, &amp; entity, \u00e6 and \u00c9t\u00e9"
    assert fix_unicode(kept) == kept


def test_unicode_forms():
    decomposed = "Cafe\u0301 \ufb01ne"
    assert transform(decomposed, CleanConfig(**{**ALL_OFF, "unicode_form": "NFC"}))[0] == "Caf\u00e9 \ufb01ne"
    assert transform(decomposed, CleanConfig(**{**ALL_OFF, "unicode_form": "NFKC"}))[0] == "Caf\u00e9 fine"
    with pytest.raises(ValueError, match="unicode_form"):
        CleanConfig(unicode_form="NFX")


def test_strip_control_removes_invisible_characters_but_not_layout():
    assert strip_control("\ufeffzero\u200bwidth\x00\x07 \u202elrm\x85\tcol\nline\r\n") == "zerowidth lrm\tcol\nline\r\n"


def test_normalize_whitespace():
    text = "  indented \r\nline  \r\r\n\n\n\n\n\nend\t\n\n"
    assert normalize_whitespace(text) == "  indented\nline\n\n\nend\n"
    assert normalize_whitespace(text, max_blank_lines=0) == "  indented\nline\nend\n"
    assert normalize_whitespace("\n \n") == ""


def test_transform_counts_each_step_that_changed_the_text_and_respects_switches():
    text = "\ufeffCAFE\u0301  \r\n"
    cleaned, changes = transform(text, CleanConfig(lowercase=True))
    assert cleaned == "caf\u00e9\n"
    assert changes == {"unicode_form": 1, "strip_control": 1, "normalize_whitespace": 3, "lowercase": 0}
    assert transform(text, CleanConfig(**ALL_OFF)) == (text, {})
    assert transform("abc\n", CleanConfig(lowercase=True))[1] == {}


@pytest.mark.parametrize("setting, text, expected", [
    ({"min_chars": 50}, "too short\n", ("min_chars", 10)),
    ({"max_chars": 20}, PROSE, ("max_chars", len(PROSE))),
    ({"min_words": 50}, PROSE, ("min_words", 32)),
    ({"max_symbol_ratio": 0.2}, "{{{ }}} ### @@@ word\n", ("max_symbol_ratio", 0.75)),
    ({"min_mean_word_length": 3}, "a b c d e f\n", ("min_mean_word_length", 1.0)),
    ({"max_mean_word_length": 10}, "x" * 30 + " " + "y" * 30 + "\n", ("max_mean_word_length", 30.0)),
    ({"max_repeated_line_chars": 0.3}, "Buy now!\nBuy now!\nBuy now!\nfine\n",
     ("max_repeated_line_chars", 0.5714)),  # 16 of 28 characters
])
def test_each_filter_drops_with_its_reason_and_value(setting, text, expected):
    assert failed_filter(text, CleanConfig(**{**ALL_OFF, **setting})) == expected
    assert failed_filter(text, CleanConfig(**ALL_OFF)) is None  # every filter off: nothing dropped


def test_prose_passes_the_default_quality_filters():
    config = CleanConfig(min_chars=100, min_words=20, max_symbol_ratio=0.25, min_mean_word_length=3,
                         max_mean_word_length=10, max_repeated_line_chars=0.3)
    assert failed_filter(PROSE, config) is None


def test_repeated_line_chars_ignores_blank_lines_and_counts_repeats_only():
    assert repeated_line_chars("a line\n\n\nanother\n") == 0.0
    assert repeated_line_chars("abcd\nabcd\n\nxy\n") == pytest.approx(4 / 10)

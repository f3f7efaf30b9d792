import pytest

from lightning_llm.data.tokenizer import EOT, TokenizerConfig, encode_prompt, train_tokenizer
from lightning_llm.errors import UserError

TEXT = ["ROMEO.\nBut soft, what light through yonder window breaks?\n", "JULIET.\nAy me!  \u00c9t\u00e9.\n"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_round_trip(kind):
    tokenizer = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1), TEXT * 5)
    for text in TEXT:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    ids = tokenizer.encode("ROMEO." + EOT).ids
    assert ids[-1] == tokenizer.token_to_id(EOT)


def test_char_tokenizer_has_one_token_per_character():
    tokenizer = train_tokenizer(TokenizerConfig(kind="char"), TEXT)
    assert len(tokenizer.encode(TEXT[0]).ids) == len(TEXT[0])
    assert tokenizer.get_vocab_size() == len(set("".join(TEXT))) + 2  # the separator and unknown tokens


def test_bpe_encodes_text_it_never_saw():
    tokenizer = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1), TEXT * 5)
    assert tokenizer.decode(tokenizer.encode("\u2603 snow").ids) == "\u2603 snow"


def test_prompt_with_unseen_characters_names_them():
    tokenizer = train_tokenizer(TokenizerConfig(kind="char"), TEXT)
    with pytest.raises(UserError, match="'#'.*'@'"):
        encode_prompt(tokenizer, "ROMEO@ #")
    assert encode_prompt(tokenizer, "ROMEO.") == tokenizer.encode("ROMEO.").ids

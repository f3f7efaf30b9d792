import numpy as np
import pytest

from lightning_llm.data.tokenizer import EOT, UNK, ShardEncoder, TokenizerConfig, encode_prompt, train_tokenizer
from lightning_llm.errors import UserError

TEXT = ["ROMEO.\nBut soft, what light through yonder window breaks?\n", "JULIET.\nAy me!  \u00c9t\u00e9.\n",
        "  Indented line\n\n\nafter blank lines\n"]


def trained(kind, **overrides):
    config = TokenizerConfig(kind=kind, **{"vocab_size": 300, "min_frequency": 1, **overrides})
    return train_tokenizer(config, TEXT * 5)


@pytest.mark.parametrize("kind", ["char", "bpe", "unigram"])
def test_round_trip_and_special_tokens(kind):
    tokenizer = trained(kind)
    for text in TEXT:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.token_to_id(EOT) == 0  # the document separator
    for token in ("<|bos|>", "<|eos|>", "<|pad|>"):
        assert tokenizer.token_to_id(token) is not None
    assert (tokenizer.token_to_id(UNK) is None) == (kind == "bpe")  # byte-level BPE has no unknowns


def test_special_tokens_are_configurable():
    tokenizer = trained("bpe", bos=None, eos=None, pad="[PAD]")
    assert tokenizer.token_to_id("<|bos|>") is None and tokenizer.token_to_id("[PAD]") is not None
    with pytest.raises(ValueError, match="distinct"):
        TokenizerConfig(pad=EOT)
    with pytest.raises(ValueError, match="longer than one character"):
        TokenizerConfig(kind="char", bos="\x02")


def test_char_tokenizer_has_one_token_per_character():
    tokenizer = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0, min_frequency=1), TEXT)
    assert len(tokenizer.encode(TEXT[0]).ids) == len(TEXT[0])
    assert tokenizer.get_vocab_size() == len(set("".join(TEXT))) + 5  # separator, unknown, BOS, EOS, PAD


def test_char_vocabulary_obeys_min_frequency_and_size():
    rare_dropped = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0, min_frequency=2), ["aab"])
    assert rare_dropped.token_to_id("a") is not None and rare_dropped.token_to_id("b") is None
    capped = train_tokenizer(TokenizerConfig(kind="char", vocab_size=6, min_frequency=1), ["aaabbc"])
    assert capped.get_vocab_size() == 6 and capped.token_to_id("a") == 5  # 5 specials, then the most frequent


def test_shard_encoder_char_table_gives_the_tokenizers_ids():
    tokenizer = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0, min_frequency=1), TEXT)
    tricky = "ROMEO <|endoftext|> caf\u00e9 e\u0301 \U0001F600 ~#\n"  # literal separator, combining, emoji, unseen
    ids = ShardEncoder(tokenizer).encode([tricky, TEXT[1]])
    reference = ShardEncoder(tokenizer)
    reference.table = None  # the tokenizer itself, special tokens read as text
    for fast, slow in zip(ids, reference.encode([tricky, TEXT[1]])):
        np.testing.assert_array_equal(fast, slow)
    assert len(ids[0]) == len(tricky) and tokenizer.token_to_id(EOT) not in ids[0].tolist()


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_document_cannot_forge_a_separator(kind):
    tokenizer = trained(kind)
    ids = ShardEncoder(tokenizer).encode(["ROMEO." + EOT + "JULIET."])[0]
    assert tokenizer.token_to_id(EOT) not in ids.tolist()
    assert tokenizer.encode("ROMEO." + EOT).ids[-1] == tokenizer.token_to_id(EOT)  # prompts may still use it


def test_bpe_encodes_text_it_never_saw():
    tokenizer = trained("bpe")
    assert tokenizer.decode(tokenizer.encode("\u2603 snow").ids) == "\u2603 snow"


@pytest.mark.parametrize("kind", ["char", "unigram"])
def test_prompt_with_unseen_characters_names_them(kind):
    tokenizer = trained(kind)
    with pytest.raises(UserError, match="'#'.*'@'"):
        encode_prompt(tokenizer, "ROMEO@ #")
    assert encode_prompt(tokenizer, "ROMEO.") == tokenizer.encode("ROMEO.").ids


def test_config_checks():
    with pytest.raises(ValueError, match="tokenizer.kind"):
        TokenizerConfig(kind="wordpiece")
    with pytest.raises(ValueError, match="more than 260"):
        TokenizerConfig(kind="bpe", vocab_size=200)
    assert TokenizerConfig(kind="char", vocab_size=9).identity() != TokenizerConfig(kind="char").identity()

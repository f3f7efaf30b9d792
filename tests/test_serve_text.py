"""The server's text helpers and cache, without a server: stop strings across pieces, incremental
decoding of multi-byte characters, the chat template, LRU order, the error body's field names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.serving.cache import ResponseCache, cache_key
from lightning_llm.serving.protocol import ChatRequest, CompletionRequest, validation_error
from lightning_llm.serving.text import DEFAULT_CHAT_TEMPLATE, IncrementalDecoder, StopMatcher, render_chat


def released(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stops), ""
    for piece in pieces:
        text, hit = matcher.push(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize("stops, pieces, expected", [
    (["END"], ["abc", "E", "N", "D", "xyz"], ("abc", True)),  # found across three pieces
    (["END"], ["abcEN", "x"], ("abcENx", False)),  # a prefix that does not complete is released
    (["\n\n", "!"], ["a\n", "b!c"], ("a\nb", True)),
    (["ab", "b"], ["xab"], ("x", True)),  # the earliest stop wins
    (["END"], ["abcEN"], ("abcEN", False)),  # held back, then flushed at the end
])
def test_stop_strings_are_found_across_pieces_and_cut(stops, pieces, expected):
    assert released(stops, pieces) == expected


def test_text_that_could_start_a_stop_string_is_held_back():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("go ST") == ("go ", False)
    assert matcher.push("O") == ("", False)
    assert matcher.push("x") == ("STOx", False)


@pytest.fixture(scope="module")
def bpe():
    texts = ["héllo wörld, ça va? 日本語のテキスト", "hello world again and again"] * 50
    return train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1), texts)


def test_incremental_decoding_joins_multibyte_characters(bpe):
    text = " wörld 日本語 ça"
    ids = bpe.encode(text).ids
    prompt = bpe.encode("héllo").ids
    decoder = IncrementalDecoder(bpe, prompt)
    pieces = [decoder.push(t) for t in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # a character split over byte tokens waits for its last byte


def test_the_default_chat_template_renders_role_markers():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who's there?"}]
    text = render_chat(messages, template=DEFAULT_CHAT_TEMPLATE, specials={"eos_token": "<|endoftext|>"})
    assert text == "SYSTEM:\nBe brief.\n\nUSER:\nWho's there?\n\nASSISTANT:\n"


def test_a_template_cannot_reach_python_internals():
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        render_chat([], template="{{ ''.__class__.__mro__[1].__subclasses__() }}", specials={})


def test_the_cache_keeps_the_most_recently_used():
    cache = ResponseCache(2)
    cache.put("a", {"x": 1})
    cache.put("b", {"x": 2})
    assert cache.get("a") == {"x": 1}  # a is now the most recent
    cache.put("c", {"x": 3})
    assert cache.get("b") is None and cache.get("a") == {"x": 1} and len(cache) == 2
    got = cache.get("c")
    got["x"] = 99  # a caller's change never reaches the cached copy
    assert cache.get("c") == {"x": 3}
    assert len(ResponseCache(0).entries) == 0


def test_the_cache_key_ignores_delivery_but_not_content():
    base = CompletionRequest(prompt="A", temperature=0)
    assert cache_key("completion", base, "m") == cache_key(
        "completion", CompletionRequest(prompt="A", temperature=0, stream=True, user="u", model="m"), "m")
    assert cache_key("completion", base, "m") != cache_key("completion", CompletionRequest(prompt="A ", temperature=0),
                                                           "m")
    assert cache_key("completion", base, "m") != cache_key("chat", base, "m")


@pytest.mark.parametrize("model, body, param", [
    (CompletionRequest, {"prompt": "A", "n": "2"}, "n"),
    (CompletionRequest, {"prompt": "A", "bogus": 1}, "bogus"),
    (CompletionRequest, {}, "prompt"),
    (ChatRequest, {"messages": [{"role": "user", "content": [{"type": "image_url", "text": "x"}]}]},
     "messages.0.content"),
])
def test_validation_errors_name_the_field(model, body, param):
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    err = validation_error(caught.value)
    assert err.status == 400 and err.param == param and err.body()["error"]["param"] == param

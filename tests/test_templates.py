"""Chat templates (conf/template/): each renders the expected text; transformers renders the same Jinja
the same way; the model folder records its default and the server, `llm generate` and the HF export
agree on it; an unknown template or role fails in one line (CLI) or a 400 naming the field (server)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import pytest
import torch
from conftest import compose_config, llm
from tokenizers import Tokenizer

from lightning_llm.data.tokenizer import TokenizerConfig, train_tokenizer
from lightning_llm.errors import UserError
from lightning_llm.model import io
from lightning_llm.model.gpt import GPT, GPTConfig
from lightning_llm.model.io import load_artifact, new_manifest, save_artifact
from lightning_llm.templates import (
    DEFAULT_TEMPLATE,
    MessageError,
    known_templates,
    load_template,
    model_template,
    parse_messages,
    template_from_node,
)

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is the optional [hf] extra")

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who's there?"},
                {"role": "assistant", "content": "Nay, answer me."}, {"role": "user", "content": "Long live the King!"}]
DOCUMENTS = [{"title": "hamlet.txt:1-2", "text": "BERNARDO. Who's there?\nFRANCISCO. Nay, answer me."},
             {"title": "notes/b.md:5-5", "text": "Second."}]
TURNS = "USER:\nWho's there?\n\nASSISTANT:\nNay, answer me.\n\nUSER:\nLong live the King!\n\nASSISTANT:\n"
DOCS = "DOCUMENTS:\n[1] hamlet.txt:1-2\nBERNARDO. Who's there?\nFRANCISCO. Nay, answer me.\n\n[2] notes/b.md:5-5\n" \
       "Second.\n\n"
EXAMPLES = ("USER:\nWho is the Prince of Denmark?\n\nASSISTANT:\nHamlet, son to the late King Hamlet.\n\n"
            "USER:\nWhere do Romeo and Juliet live?\n\nASSISTANT:\nIn fair Verona, where we lay our scene.\n\n"
            "USER:\nWhat does Macbeth become?\n\nASSISTANT:\nKing of Scotland, by murder.\n\n")
GROUNDED = ("Answer from the documents below and name the one you use by its number, as [1]. If they do not hold "
            "the answer, say so.")
SYSTEM_PROMPT = ("You are a player in Shakespeare's company. Answer the user briefly, in the language of the plays, "
                 "and say so when the documents given do not hold the answer.")
EXPECTED = {  # (template, the conversation has its own system message, documents) -> the prompt
    ("plain", True, False): "SYSTEM:\nBe brief.\n\n" + TURNS,
    ("plain", True, True): "SYSTEM:\nBe brief.\n\n" + DOCS + TURNS,
    ("plain", False, True): DOCS + TURNS,
    ("system", True, False): "SYSTEM:\nBe brief.\n\n" + TURNS,
    ("system", False, False): f"SYSTEM:\n{SYSTEM_PROMPT}\n\n" + TURNS,
    ("system", False, True): f"SYSTEM:\n{SYSTEM_PROMPT}\n\n" + DOCS + TURNS,
    ("fewshot", True, False): "SYSTEM:\nBe brief.\n\n" + EXAMPLES + TURNS,
    ("fewshot", False, False): "SYSTEM:\nAnswer each question in one line, as in the examples.\n\n" + EXAMPLES + TURNS,
    ("fewshot", True, True): "SYSTEM:\nBe brief.\n\n" + EXAMPLES + DOCS + TURNS,
    ("grounded", False, True): f"SYSTEM:\n{GROUNDED}\n\n" + DOCS + TURNS,
    ("grounded", True, False): "SYSTEM:\nBe brief.\n\n" + TURNS,
}


def conversation(with_system: bool) -> list[dict]:
    return CONVERSATION if with_system else CONVERSATION[1:]


@pytest.mark.parametrize("case", list(EXPECTED), ids=["-".join(map(str, c)) for c in EXPECTED])
def test_each_shipped_template_renders_the_expected_text(case):
    name, with_system, with_documents = case
    text = load_template(name).render(conversation(with_system), specials={"eos_token": "<|endoftext|>"},
                                      documents=DOCUMENTS if with_documents else None)
    assert text == EXPECTED[case]


def test_every_shipped_template_is_tested_and_plain_is_the_default():
    assert sorted({name for name, _, _ in EXPECTED}) == known_templates() == ["fewshot", "grounded", "plain", "system"]
    assert [load_template(n).rag_top_k for n in known_templates()] == [None, 3, None, None]  # grounded asks for it
    assert DEFAULT_TEMPLATE == io.DEFAULT_TEMPLATE == "plain"
    assert load_template("plain").render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == \
        "USER:\nHi\n\n"


@needs_transformers
@pytest.mark.parametrize("case", list(EXPECTED), ids=["-".join(map(str, c)) for c in EXPECTED])
def test_transformers_renders_the_same_jinja_the_same_way(case):
    from transformers.utils.chat_template_utils import render_jinja_template

    name, with_system, with_documents = case
    rendered, _ = render_jinja_template(conversations=[conversation(with_system)], chat_template=load_template(name).source,
                                        documents=DOCUMENTS if with_documents else None, add_generation_prompt=True)
    assert rendered[0] == EXPECTED[case]


def test_an_unknown_template_or_role_is_one_line_naming_what_is_known():
    for name in ("nope", "../serve", "plain/../../x", ""):
        with pytest.raises(UserError) as err:
            load_template(name)
        assert str(err.value) == f"template={name!r} is not a template: known are fewshot, grounded, plain, system"
    with pytest.raises(MessageError) as err:
        load_template("system").render([{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "x"}])
    assert err.value.param == "messages.1.role" and "'wizard'" in str(err.value) and "\n" not in str(err.value)
    # The Jinja refuses it as well, so a transformers user of the exported template gets the same refusal.
    from jinja2 import TemplateError

    from lightning_llm.templates import render_chat
    with pytest.raises(TemplateError, match="unknown role 'wizard'"):
        render_chat([{"role": "wizard", "content": "x"}], template=load_template("plain").source, specials={})


def test_command_line_messages_are_a_list_or_json():
    expected = [{"role": "user", "content": "Hi"}]
    assert parse_messages('[{"role": "user", "content": "Hi"}]') == expected
    assert parse_messages([{"role": "user", "content": "Hi"}]) == expected
    for bad, message in (("[{", "not JSON"), ("[]", "non-empty list"), ('[{"role": "user"}]', "exactly role and"),
                         ('[{"role": "user", "content": 5}]', "must be strings"), ('{"role": "user"}', "list")):
        with pytest.raises(UserError, match=message):
            parse_messages(bad)


def test_the_model_folder_records_its_default_and_old_folders_get_plain():
    assert model_template({}).name == "plain" and model_template({}).source == load_template("plain").source
    fewshot = load_template("fewshot")
    recorded = model_template({"template": "fewshot", "chat_template": fewshot.source})
    assert recorded == fewshot
    imported = model_template({"chat_template": "{{ messages[0]['content'] }}"})
    assert imported.name == "model" and imported.roles == ()  # an imported model's own Jinja decides its roles
    # What `llm train` records (stages/train.py run_template): template=<name> composes
    # conf/template/<name>.yaml, plain by default.
    assert template_from_node(compose_config("train", []).template).name == "plain"
    assert template_from_node(compose_config("train", ["template=fewshot"]).template) == fewshot


# --- a tiny model: llm generate, the server and the export agree ------------------------------------

CORPUS = "Who's there? Nay, answer me: stand, and unfold yourself. Long live the King! " \
         "SYSTEM USER ASSISTANT DOCUMENTS Answer each question in one line, as in the examples. 0123456789[]-:.\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random tiny model that records the fewshot template as its default."""
    tokenizer_json = train_tokenizer(TokenizerConfig(kind="char", vocab_size=0),
                                     [CORPUS + EXAMPLES + SYSTEM_PROMPT]).to_str()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=Tokenizer.from_str(tokenizer_json).get_vocab_size(), block_size=512, n_layer=1,
                          n_head=2, n_embd=32))
    fewshot = load_template("fewshot")
    manifest = new_manifest(produced_by="test", tokenizer_json=tokenizer_json, template=fewshot.name,
                            chat_template=fewshot.source)
    return save_artifact(model, tokenizer_json, tmp_path_factory.mktemp("templates") / "model", manifest=manifest)


def test_a_run_dir_served_through_its_checkpoint_keeps_the_recorded_template(folder, tmp_path):
    import shutil

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    shutil.copytree(folder, run / "model")
    artifact = load_artifact(folder)
    torch.save({"hyper_parameters": {"model_config": artifact.config.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in artifact.model.state_dict().items()},
                "tokenizer_json": (folder / "tokenizer.json").read_text()}, run / "checkpoints" / "best.ckpt")
    loaded = load_artifact(run)  # a run dir means its best checkpoint
    assert loaded.path.name == "best.ckpt" and model_template(loaded.manifest) == load_template("fewshot")


def test_llm_generate_renders_messages_with_the_template_and_refuses_in_one_line(folder, tmp_path):
    messages = [{"role": "user", "content": "Who's there?"}]
    # The model's recorded default (fewshot), messages as a string of JSON (quoted for Hydra).
    out = llm(["generate", f"ckpt={folder}", "max_new_tokens=3", f"messages={json.dumps(json.dumps(messages))}"],
              tmp_path)
    assert out.stdout.startswith(load_template("fewshot").render(messages))
    for args, message in (
            (["template=nope"],
             "Could not find 'template/nope' Available options in 'template': fewshot grounded plain system"),
            (["template=system", "messages=[{role:wizard,content:x}]"],
             "messages.0.role='wizard' is not a role template 'system' takes (system, user, assistant)")):
        bad = llm(["generate", f"ckpt={folder}", *args], tmp_path, check=False)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_generate_reads_messages_as_a_hydra_list_with_a_named_template():
    from lightning_llm.stages.generate import chat_request

    cfg = compose_config("generate", ["ckpt=x", "template=plain", "messages=[{role:user,content:\"Who's there?\"}]"])
    template, messages = chat_request(cfg)
    assert template.name == "plain" and messages == [{"role": "user", "content": "Who's there?"}]
    template, messages = chat_request(compose_config("generate", ["ckpt=x", "template=system", "prompt=Hark"]))
    assert messages == [{"role": "user", "content": "Hark"}]  # the prompt as one user turn
    assert chat_request(compose_config("generate", ["ckpt=x"])) is None  # a plain prompt, as before
    with pytest.raises(UserError, match="exactly role and content"):
        chat_request(compose_config("generate", ["ckpt=x", "messages=[{role:user}]"]))


def post_chat(service, body: dict) -> httpx.Response:
    from lightning_llm.serving.app import create_app

    async def go():
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if body is None:
                return await client.get("/v1/templates")
            return await client.post("/v1/chat/completions", json=body)
    return asyncio.run(go())


@pytest.fixture(scope="module")
def service(folder):
    from lightning_llm.serving.service import Service
    from lightning_llm.serving.settings import ServeSettings

    service = Service(load_artifact(folder), ServeSettings(ckpt=str(folder), warmup=False, max_tokens=8, default_max_tokens=8))
    service.start()
    yield service
    service.stop()


def test_the_server_renders_with_the_models_template_or_a_named_one_and_refuses_with_a_400(service):
    listing = post_chat(service, None).json()
    assert listing == {"object": "list", "data": [{"name": "fewshot", "default": True},
                                                  {"name": "grounded", "default": False},
                                                  {"name": "plain", "default": False},
                                                  {"name": "system", "default": False}], "rag_index": None}
    messages = [{"role": "user", "content": "Who's there?"}]
    for name in (None, "fewshot", "grounded", "plain", "system"):  # grounded: no index here, so no retrieval
        body = {"messages": messages, "max_tokens": 2, "temperature": 0, **({"template": name} if name else {})}
        answer = post_chat(service, body)
        assert answer.status_code == 200, answer.text
        prompt = service.tokenizer.encode(load_template(name or "fewshot").render(messages, specials=service.specials))
        assert answer.json()["usage"]["prompt_tokens"] == len(prompt.ids)
        assert "citations" not in answer.json()
    for body, param, words in (
            ({"messages": messages, "template": "nope"}, "template", "known are fewshot, grounded, plain, system"),
            ({"messages": messages, "template": "../x"}, "template", "is not a template"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "'wizard'"),
            ({"messages": messages, "template": 5}, "template", "string"),
            ({"messages": messages, "rag": {"top_k": 2}}, "rag", "no index")):
        answer = post_chat(service, body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == param and words in error["message"], error


@needs_transformers
def test_the_hf_export_carries_the_models_template(folder, tmp_path):
    from transformers import AutoTokenizer

    from lightning_llm.export import export_hf

    export_hf(ckpt=folder, out=tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == load_template("fewshot").source
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "Who's there?"}]
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        load_template("fewshot").render(messages)

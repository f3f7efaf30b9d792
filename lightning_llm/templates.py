"""Chat templates: Jinja in the format Hugging Face tokenizers use (`chat_template`), one named file each
in conf/template/, loaded by name.

A template file holds the Jinja (`chat_template`), the roles it takes, and the values it is made
from: a default system prompt and few-shot examples. Those values are baked into the Jinja when the
file is loaded (`{% set system_prompt = ... %}` in front, JSON literals, which Jinja reads as they
are), so `ChatTemplate.source` stands alone: it is what a model folder's manifest records, what the
server renders, and what `llm export format=hf` writes into tokenizer_config.json.

Rendering is sandboxed and immutable, with trim_blocks and lstrip_blocks, as transformers'
apply_chat_template renders: the same Jinja gives the same text here and there. The variables are
those transformers passes: messages, add_generation_prompt, documents ({title, text} dicts), and the
special tokens (bos_token, eos_token, ...).

Plain Python and Jinja (no Hydra app): stages, serving and export all use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from omegaconf import DictConfig, OmegaConf

from lightning_llm.config import CONF_DIR, check_name, to_dataclass
from lightning_llm.errors import UserError

__all__ = ["DEFAULT_TEMPLATE", "ChatTemplate", "MessageError", "compile_template", "known_templates", "load_template",
           "model_template", "parse_messages", "render_chat", "template_from_node"]

TEMPLATE_DIR = Path(CONF_DIR) / "template"
DEFAULT_TEMPLATE = "plain"  # the default of `llm train`, and of a model folder that records none (model/io.py)


class MessageError(UserError):
    """A conversation a template does not take; `param` names the field (`messages.2.role`)."""

    def __init__(self, message: str, *, param: str = "messages"):
        super().__init__(message)
        self.param = param


@dataclass
class TemplateConfig:
    """The checked form of conf/template/<name>.yaml."""

    name: str  # the file's name (conf/template/<name>.yaml)
    chat_template: str
    description: str = ""
    roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"])  # empty: the Jinja decides
    system_prompt: str | None = None  # baked in as `system_prompt`
    examples: list[dict[str, str]] = field(default_factory=list)  # few-shot {user, assistant} pairs, as `examples`
    rag_top_k: int | None = None  # a template that asks for retrieval: passages it gets on a server with an index

    def __post_init__(self):
        check_name(self.name, "template")
        if not self.chat_template.strip():
            raise ValueError("chat_template is empty")
        if self.rag_top_k is not None and self.rag_top_k < 1:
            raise ValueError(f"rag_top_k must be at least 1 (or null), got {self.rag_top_k}")
        for i, example in enumerate(self.examples):
            if set(example) != {"user", "assistant"}:
                raise ValueError(f"examples[{i}] must have exactly the keys user and assistant, got {sorted(example)}")


@dataclass(frozen=True)
class ChatTemplate:
    """A named template ready to render; `source` is the whole Jinja, config values baked in."""

    name: str
    source: str
    roles: tuple[str, ...] = ()  # empty: any role (a template recorded with an imported model checks its own)
    description: str = ""
    rag_top_k: int | None = None  # retrieves this many passages by itself where the server has an index

    @classmethod
    def from_config(cls, config: TemplateConfig) -> ChatTemplate:
        name = config.name
        prelude = ""
        if config.system_prompt is not None:
            prelude += "{%- set system_prompt = " + json.dumps(config.system_prompt) + " -%}\n"
        if config.examples:
            prelude += "{%- set examples = " + json.dumps(config.examples) + " -%}\n"
        template = cls(name=name, source=prelude + config.chat_template, roles=tuple(config.roles),
                       description=config.description, rag_top_k=config.rag_top_k)
        try:
            compile_template(template.source)
        except TemplateError as err:
            raise UserError(f"template {name}: its chat_template is not valid Jinja ({err})") from None
        return template

    def check(self, messages: list[dict]) -> None:
        """Refuse a message this template does not take, naming it: `messages.<i>.role`."""
        for i, message in enumerate(messages):
            role = message.get("role")
            if self.roles and role not in self.roles:
                raise MessageError(f"messages.{i}.role={role!r} is not a role template {self.name!r} takes "
                                   f"({', '.join(self.roles)})", param=f"messages.{i}.role")
            if not isinstance(message.get("content"), str):
                raise MessageError(f"messages.{i}.content must be a string", param=f"messages.{i}.content")

    def render(self, messages: list[dict], *, specials: dict[str, str | None] | None = None,
               documents: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation ({role, content} dicts), with retrieved documents
        ({title, text} dicts) where the template puts them. A conversation the template refuses
        (an unknown role; its own raise_exception) is a MessageError."""
        self.check(messages)
        try:
            return render_chat(messages, template=self.source, specials=specials or {}, documents=documents,
                               add_generation_prompt=add_generation_prompt)
        except TemplateError as err:
            raise MessageError(f"messages: template {self.name!r} refused them: {err}") from None


def known_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATE_DIR.glob("*.yaml"))


def load_template(name: str) -> ChatTemplate:
    """conf/template/<name>.yaml as a ChatTemplate; an unknown name is one line listing the known ones."""
    try:
        check_name(name, "template")
        path = TEMPLATE_DIR / f"{name}.yaml"
        known = path.is_file()
    except UserError:
        known = False
    if not known:
        raise UserError(f"template={name!r} is not a template: known are {', '.join(known_templates())}")
    template = _load(name, path.stat().st_mtime_ns)
    if template.name != name:
        raise UserError(f"{path} says name: {template.name}: a template's name is its file's name")
    return template


@lru_cache(maxsize=64)
def _load(name: str, mtime_ns: int) -> ChatTemplate:
    return template_from_node(OmegaConf.load(TEMPLATE_DIR / f"{name}.yaml"))


def template_from_node(node: DictConfig | dict) -> ChatTemplate:
    """A template from its config node: the one Hydra composed for `template=<name>`, or the file."""
    name = node.get("name", "?") if hasattr(node, "get") else "?"
    return ChatTemplate.from_config(to_dataclass(TemplateConfig, node, f"template {name}"))


def model_template(manifest: dict) -> ChatTemplate:
    """The template a model artifact records as its default (model/io.py's manifest_template): its
    own Jinja when it carries one (the one it was trained with, an imported model's), else the named file."""
    from lightning_llm.model.io import manifest_template

    name, source = manifest_template(manifest)
    if source is None:
        return load_template(name)
    try:
        shipped = load_template(name)
    except UserError:
        shipped = None
    same = shipped is not None and shipped.source == source
    roles, rag_top_k = (shipped.roles, shipped.rag_top_k) if same else ((), None)
    try:
        compile_template(source)
    except TemplateError as err:
        raise UserError(f"the model's recorded chat template {name!r} is not valid Jinja ({err})") from None
    return ChatTemplate(name=name, source=source, roles=roles, rag_top_k=rag_top_k,
                        description=shipped.description if shipped is not None else "recorded with the model")


# --- rendering ------------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def compile_template(source: str):
    """A chat template compiled the way transformers' apply_chat_template does: sandboxed, immutable."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render_chat(messages: list[dict], *, template: str, specials: dict[str, str | None],
                add_generation_prompt: bool = True, documents: list[dict] | None = None) -> str:
    """The prompt text of a conversation with a template's Jinja source: messages are {"role",
    "content"} dicts, documents {"title", "text"} dicts (or None)."""
    return compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             documents=documents or [],
                                             **{k: v or "" for k, v in specials.items()})


def parse_messages(value, where: str = "messages") -> list[dict]:
    """Messages given on a command line: a list of {role, content} (a Hydra list, or a string of
    JSON). Anything else is one UserError."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UserError(f"{where} is not JSON ({err.msg} at character {err.pos}): pass a list of "
                            "{role, content} objects") from None
    elif value is not None and not isinstance(value, list | dict):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, list) or not value:
        raise UserError(f"{where} must be a non-empty list of {{role, content}} objects")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            keys = sorted(message) if isinstance(message, dict) else type(message).__name__
            raise UserError(f"{where}[{i}] must be an object with exactly role and content, got {keys}")
        if not isinstance(message["role"], str) or not isinstance(message["content"], str):
            raise UserError(f"{where}[{i}]: role and content must be strings")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages

"""Turning a conversation into the text a model continues: its chat template, or a plain format.

A model with a chat template (tokenizer_config.json or chat_template.jinja) gets exactly what it was
trained on. A base model without one gets a readable plain transcript ending in "Assistant:", and
generation stops when the model starts writing the next "User:" turn itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
# Where a reply in the plain format ends: the model begins the next turn.
PLAIN_STOPS = ("\nUser:", "\nSystem:")


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Prompt:
    """What goes to the model: the text, and whether the template already holds special tokens."""

    text: str
    templated: bool
    stop_strings: tuple[str, ...] = ()


def conversation(history: list[Message], user_text: str, system_prompt: str = "") -> list[Message]:
    """The messages for the next reply: the system prompt (if any), the history, the new turn."""
    messages = [Message("system", system_prompt)] if system_prompt.strip() else []
    messages += [m for m in history if m.role != "system"]
    messages.append(Message("user", user_text))
    return messages


def plain_prompt(messages: list[Message]) -> str:
    """A transcript any base model can continue: "System: …", "User: …", then "Assistant:"."""
    lines = [f"{PLAIN_NAMES.get(m.role, m.role.title())}: {m.content.strip()}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


def format_prompt(tokenizer: Any, messages: list[Message]) -> Prompt:
    """The chat template's rendering when the tokenizer has one that works, else the plain format."""
    template = getattr(tokenizer, "chat_template", None)
    if template:
        dicts = [m.as_dict() for m in messages]
        try:
            text = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
            return Prompt(str(text), templated=True)
        except Exception as first:  # some templates refuse a system turn: fold it into the user's
            if messages and messages[0].role == "system" and len(messages) > 1:
                folded = _fold_system(messages)
                try:
                    text = tokenizer.apply_chat_template(
                        [m.as_dict() for m in folded], tokenize=False, add_generation_prompt=True
                    )
                    return Prompt(str(text), templated=True)
                except Exception:
                    pass
            del first
    return Prompt(plain_prompt(messages), templated=False, stop_strings=PLAIN_STOPS)


def _fold_system(messages: list[Message]) -> list[Message]:
    system, rest = messages[0], list(messages[1:])
    for index, message in enumerate(rest):
        if message.role == "user":
            rest[index] = Message("user", f"{system.content}\n\n{message.content}")
            break
    return rest


def trim_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The reply up to the first stop string, and whether one was found."""
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True

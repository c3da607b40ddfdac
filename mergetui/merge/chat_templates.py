"""Named chat templates a recipe can ask for (`chat_template = "chatml"`), as mergekit offers them.

mergekit 0.1.5 ships alpaca, chatml, exaone, llama3 and mistral; these are the same conversation
formats, written with whitespace control so the rendered prompt carries no stray blank lines.
`resolve_chat_template` also accepts a literal Jinja template and "auto" (the template most of the
input models share), following mergekit's rules for telling a name from a template.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mergetui.errors import UserError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}"
    "{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

ALPACA = (
    "{%- set system = messages | selectattr('role', 'equalto', 'system') | list %}"
    "{%- if system %}{{- (system | last).content | trim }}\n\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}### Instruction:\n{{ message['content'] | trim }}"
    "{%- elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] | trim }}"
    "{%- elif message['role'] == 'user_context' %}### Input:\n{{ message['content'] | trim }}"
    "{%- endif %}"
    "{%- if message['role'] != 'system' and not loop.last %}\n\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' %}\n\n### Response:\n"
    "{%- endif %}"
)

EXAONE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{%- endif %}"
    "{{- '[|' + message['role'] + '|]' + message['content'] }}"
    "{%- if message['role'] == 'user' %}{{ '\\n' }}{%- else %}{{ '[|endofturn|]\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '[|assistant|]' }}{%- endif %}"
)

NAMED_TEMPLATES: dict[str, str] = {
    "alpaca": ALPACA,
    "chatml": CHATML,
    "exaone": EXAONE,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
}


def resolve_chat_template(value: str, model_templates: Iterable[str | None] = ()) -> str | None:
    """The Jinja text for a recipe's `chat_template`: a name, "auto", or a template itself.

    "auto" picks the template most input models share (None when none has one). Anything else that
    is neither a known name nor template-like is refused, as mergekit does.
    """
    if value == "auto":
        found = [t.strip() for t in model_templates if t and t.strip()]
        return Counter(found).most_common(1)[0][0] if found else None
    if len(value) < 256 and "\n" not in value and "{" not in value:
        if value in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[value]
    if len(value) < 20 or "{" not in value:
        raise UserError(
            f"unknown chat template {value!r}",
            where="chat_template",
            fix=f"use one of {', '.join(sorted(NAMED_TEMPLATES))}, auto, or a Jinja template",
        )
    return value

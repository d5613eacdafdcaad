"""The original's prompt families, character for character, as data.

Three string formats (docs/original-differences.md#prompt-formats) and the chat templates (Jinja) that render
them from messages:

* ``benchmark``: the evaluation harness, ``###Human: <Img><ImageHere></Img> {q}###Assistant: `` (no space before
  ``###Assistant``), also demo.py's form without its system prompt.
* ``conversation``: demo.py's multi-turn chat for stages 1-3, the benchmark form behind a system prompt.
* ``instruction``: the stage-3 training template ``###Human: {} ###Assistant: `` (a space before ``###Assistant``).
* ``multitask``: the stage-4 training template ``[INST] {} [/INST]``; an image instruction is
  ``<Img><ImageHere></Img> {text} `` (trailing space), hence two spaces before ``[/INST]``. Task tokens such as
  ``[vqa]`` are ordinary text and pass through untouched.

Every template closes an assistant turn with the end symbol and marks the answer plus that symbol with
``{% generation %}``, so a training render (TRL's ``assistant_only_loss``, ``return_assistant_tokens_mask``) trains
what the original's collator labelled: the answer and the ``###`` that stops it. Inference renders
(``add_generation_prompt=True``) are unchanged by this.
"""

IMAGE_TOKEN = "<ImageHere>"
IMAGE_PROMPT = "<Img><ImageHere></Img>"
END_SYMBOL = "###"
# An answer ends at its end symbol or after this many new tokens (the original's default).
MAX_NEW_TOKENS = 300
# The label of tokens no loss is computed on (prompt, padding): PyTorch's cross-entropy default.
IGNORE_INDEX = -100

CONVERSATION_SYSTEM = (
    "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to "
    "you. Please answer my questions."
)

# Python format strings used by the training collator and the evaluation harness.
INSTRUCTION_TEMPLATE = "###Human: {} ###Assistant: "
MULTITASK_TEMPLATE = "[INST] {} [/INST]"
BENCHMARK_TEMPLATE = "###Human: {}###Assistant: "

TASK_TOKENS = ("[vqa]", "[caption]", "[refer]", "[identify]", "[grounding]", "[detection]")

# Jinja pieces. Literal text is emitted through {{ '...' }} so whitespace control never eats a meaningful space.
_CONTENT = (
    "{%- macro content(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'image' -%}{{ '" + IMAGE_PROMPT + " ' }}"
    "{%- elif block['type'] == 'text' -%}{{ block['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
_HAS_IMAGE = (
    "message['content'] is not string and message['content'] | selectattr('type', 'equalto', 'image') | list"
)
# An assistant turn's trained span: the answer and the end symbol that stops it.
_ANSWER = "{%- generation -%}{{ content(message) }}{{ '" + END_SYMBOL + "' }}{%- endgeneration -%}"


def _hash_style(default_system: str) -> str:
    """`{system}###Human: {user}###Assistant: {answer}###Human: ...###Assistant: ` (demo.py's SINGLE style),
    written as turns that each end with the end symbol so that an answer's span holds its `###`."""
    return (
        _CONTENT + "{%- set ns = namespace(system=" + repr(default_system) + ") -%}"
        "{%- for message in messages if message['role'] == 'system' -%}"
        "{%- set ns.system = content(message) -%}{%- endfor -%}"
        "{{- ns.system -}}{{ '" + END_SYMBOL + "' }}"
        "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['role'] == 'user' -%}{{ 'Human: ' }}{{ content(message) }}{{ '" + END_SYMBOL + "' }}"
        "{%- else -%}{{ 'Assistant: ' }}" + _ANSWER + "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'Assistant: ' }}{%- endif -%}"
    )


INSTRUCTION_CHAT_TEMPLATE = (
    _CONTENT + "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ '###Human: ' }}{{ content(message) }}{{ ' ' }}"
    "{%- else -%}{{ '###Assistant: ' }}" + _ANSWER + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '###Assistant: ' }}{%- endif -%}"
)

MULTITASK_CHAT_TEMPLATE = (
    _CONTENT + "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{ '[INST] ' }}{{ content(message) }}"
    "{%- if " + _HAS_IMAGE + " -%}{{ ' ' }}{%- endif -%}{{ ' [/INST]' }}"
    "{%- else -%}" + _ANSWER + "{%- endif -%}"
    "{%- endfor -%}"
)

CHAT_TEMPLATES = {
    "benchmark": _hash_style(""),
    "conversation": _hash_style(CONVERSATION_SYSTEM),
    "instruction": INSTRUCTION_CHAT_TEMPLATE,
    "multitask": MULTITASK_CHAT_TEMPLATE,
}


def chat_templates(default: str) -> dict[str, str]:
    """All named templates, with the family `default` (a stage's `chat_template`) also stored as ``default``."""
    templates = dict(CHAT_TEMPLATES)
    templates["default"] = CHAT_TEMPLATES[default]
    return templates

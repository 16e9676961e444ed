"""AirRep configuration and the one function that turns a record into the text AirRep encodes.

This file ships inside every AirRep checkpoint (next to ``modeling_airrep.py``), so it imports
only the standard library and transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import BertConfig

DEFAULT_TEXT_TEMPLATE = "Question: {prompt}\nAnswer: {response}"
DEFAULT_MAX_PROMPT_WORDS = 256
# sum first, as the columns of the paper's tables; "softmax" is the AirRep authors' evaluation pooling
# (softmax over the raw scores, no absolute value), computed when asked for.
GROUP_POOLINGS = ("sum", "attention", "softmax")
DEFAULT_POOLINGS = GROUP_POOLINGS[:2]  # what reports show unless asked for more

_SCHEMAS_HELP = (
    "instruction/input/output (Alpaca), inputs/targets (FLAN), prompt/response or prompt/completion, "
    "messages (chat: a list of role/content turns ending in an assistant turn), data ([prompt, response], "
    "as in the AirRep authors' files), or text"
)
# The AirRep authors' formatter cuts the prompt of a `data: [prompt, response]` record to 100 words
# before its usual 256-word cut.
DATA_PROMPT_WORDS = 100


class RecordFormatError(ValueError):
    """A record cannot be turned into text: it matches no schema, or one of its fields is unusable."""


def _where(index: int | None) -> str:
    return "record" if index is None else f"record {index}"


def _field(record: Mapping[str, Any], key: str, index: int | None, *, allow_empty: bool = False) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise RecordFormatError(f"{_where(index)}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordFormatError(f"{_where(index)}: field {key!r} is empty")
    return value


def _split_messages(messages: Any, index: int | None) -> tuple[str, str]:
    where = _where(index)
    if not isinstance(messages, (list, tuple)) or not messages:
        raise RecordFormatError(f"{where}: field 'messages' must be a non-empty list of role/content turns")
    for turn_index, turn in enumerate(messages):
        if not isinstance(turn, Mapping) or not {"role", "content"} <= turn.keys():
            raise RecordFormatError(f"{where}: messages[{turn_index}] must be a mapping with 'role' and 'content'")
        if not isinstance(turn["content"], str):
            raise RecordFormatError(
                f"{where}: messages[{turn_index}]['content'] must be a string, got {type(turn['content']).__name__}"
            )
    last_assistant = max((i for i, turn in enumerate(messages) if turn["role"] == "assistant"), default=None)
    if last_assistant is None:
        raise RecordFormatError(f"{where}: field 'messages' has no assistant turn to use as the response")
    response = messages[last_assistant]["content"]
    if not response.strip():
        raise RecordFormatError(f"{where}: messages[{last_assistant}]['content'] (the response) is empty")
    prompt = "\n".join(turn["content"] for turn in messages[:last_assistant] if turn["content"].strip())
    return prompt, response


def split_record(record: str | Mapping[str, Any], index: int | None = None) -> tuple[str | None, str]:
    """Split a record into ``(prompt, response)``.

    Schemas, tried in this order: chat ``messages`` (the last assistant turn is the response and the
    turns before it form the prompt), Alpaca ``instruction``/``input``/``output`` (the prompt is
    ``instruction + " " + input``), FLAN ``inputs``/``targets``, ``prompt``/``response`` or
    ``prompt``/``completion``, the AirRep authors' ``data: [prompt, response]`` (the prompt cut to
    :data:`DATA_PROMPT_WORDS` words, as their formatter does), and plain ``text``. A plain string or a
    ``text`` record has no prompt: ``(None, text)`` is returned.

    Args:
        record: A string, or a mapping in one of the schemas above. Other keys are ignored.
        index: The record's position in its collection, named in error messages.

    Raises:
        RecordFormatError: The record matches no schema, or a field is not a string or is empty.
    """
    if isinstance(record, str):
        if not record.strip():
            raise RecordFormatError(f"{_where(index)}: the text is empty")
        return None, record
    if not isinstance(record, Mapping):
        raise RecordFormatError(f"{_where(index)}: expected a string or a mapping, got {type(record).__name__}")

    keys = record.keys()
    if "messages" in keys:
        return _split_messages(record["messages"], index)
    if {"instruction", "output"} <= keys:
        instruction = _field(record, "instruction", index)
        extra = _field(record, "input", index, allow_empty=True) if record.get("input") is not None else ""
        prompt = f"{instruction} {extra}" if extra.strip() else instruction
        return prompt, _field(record, "output", index)
    if {"inputs", "targets"} <= keys:
        return _field(record, "inputs", index), _field(record, "targets", index)
    if "prompt" in keys and ({"response", "completion"} & keys):
        response_key = "response" if "response" in keys else "completion"
        return _field(record, "prompt", index), _field(record, response_key, index)
    if "data" in keys:
        pair = record["data"]
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise RecordFormatError(f"{_where(index)}: field 'data' must be a [prompt, response] pair of strings")
        if not pair[1].strip():
            raise RecordFormatError(f"{_where(index)}: the response in field 'data' is empty")
        return " ".join(pair[0].split()[:DATA_PROMPT_WORDS]), pair[1]
    if "text" in keys:
        return None, _field(record, "text", index)
    raise RecordFormatError(
        f"{_where(index)} matches no known schema; its keys are {sorted(map(str, keys))}. Expected {_SCHEMAS_HELP}."
    )


def format_text(
    record: str | Mapping[str, Any],
    template: str = DEFAULT_TEXT_TEMPLATE,
    max_prompt_words: int = DEFAULT_MAX_PROMPT_WORDS,
    index: int | None = None,
) -> str:
    """Return the text AirRep encodes for ``record`` (docs/design.md, "The text of an example").

    Records with a prompt and a response are rendered with ``template``, the prompt cut to its first
    ``max_prompt_words`` whitespace-separated words (as the reference implementation does; the
    response is kept whole and the tokenizer truncates the total). Strings and ``text`` records,
    which have no prompt, are returned unchanged.

    Example:
        >>> format_text({"instruction": "Add the numbers.", "input": "2 3", "output": "5"})
        'Question: Add the numbers. 2 3\\nAnswer: 5'
    """
    prompt, response = split_record(record, index)
    if prompt is None:
        return response
    prompt = " ".join(prompt.split()[:max_prompt_words])
    return template.format(prompt=prompt, response=response)


class AirRepConfig(BertConfig):
    r"""Configuration of an [`AirRepModel`]: a BERT-family encoder, masked mean pooling and a linear projection.

    Every BERT setting (``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ...) is accepted as in
    [`BertConfig`]. The AirRep-specific settings are:

    Args:
        projection_dim (`int`, *optional*):
            Size of the output embedding. Defaults to ``hidden_size``.
        max_seq_length (`int`, *optional*, defaults to 512):
            Inputs longer than this many tokens are truncated by ``encode``.
        text_template (`str`, *optional*, defaults to ``"Question: {prompt}\nAnswer: {response}"``):
            How a record's prompt and response become one text; needs both placeholders.
        max_prompt_words (`int`, *optional*, defaults to 256):
            The prompt is cut to this many words before the template is applied.
        group_pooling (`str`, *optional*, defaults to ``"attention"``):
            Default pooling of ``group_influence``: ``"attention"``, ``"sum"`` or ``"softmax"``.
        base_model (`str`, *optional*):
            Name of the encoder this model was initialised from, for model cards.
        frozen_layers (`int`, *optional*, defaults to 0):
            How many lower encoder layers (with the embeddings) were frozen in training. Training feeds
            their cached output to ``forward(layer_inputs=...)``, which runs only the layers above.
            Inference from token ids always runs every layer.
    """

    model_type = "airrep"

    def __init__(
        self,
        projection_dim: int | None = None,
        max_seq_length: int = 512,
        text_template: str = DEFAULT_TEXT_TEMPLATE,
        max_prompt_words: int = DEFAULT_MAX_PROMPT_WORDS,
        group_pooling: str = "attention",
        base_model: str | None = None,
        frozen_layers: int = 0,
        **kwargs: Any,
    ) -> None:
        if group_pooling not in GROUP_POOLINGS:
            raise ValueError(f"group_pooling must be one of {GROUP_POOLINGS}, got {group_pooling!r}")
        missing = [name for name in ("{prompt}", "{response}") if name not in text_template]
        if missing:
            raise ValueError(f"text_template {text_template!r} lacks the placeholder(s) {missing}")
        if max_prompt_words < 1:
            raise ValueError(f"max_prompt_words must be positive, got {max_prompt_words}")
        super().__init__(**kwargs)
        if not 0 <= frozen_layers <= self.num_hidden_layers:
            raise ValueError(f"frozen_layers must be between 0 and {self.num_hidden_layers}, got {frozen_layers}")
        self.frozen_layers = frozen_layers
        self.projection_dim = int(projection_dim) if projection_dim is not None else self.hidden_size
        self.max_seq_length = max_seq_length
        self.text_template = text_template
        self.max_prompt_words = max_prompt_words
        self.group_pooling = group_pooling
        self.base_model = base_model

    def format_text(self, record: str | Mapping[str, Any], index: int | None = None) -> str:
        """[`format_text`] with this configuration's template and prompt limit."""
        return format_text(record, self.text_template, self.max_prompt_words, index)


AirRepConfig.register_for_auto_class()

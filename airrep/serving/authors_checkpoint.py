"""Checkpoints in the AirRep authors' layout (github ``sunnweiwei/AirRep``), made Hub-native.

The authors' release (for example ``sunweiwei/AirRep-Flan-Small``) is a plain BERT config with
``model_type: "airrep"`` and no ``auto_map``, weights ``bert.*`` (sometimes with ``bert.pooler.*``)
plus a square ``projector.{weight,bias}``, often in bf16, and often no tokenizer (theirs falls back
to ``thenlper/gte-small``'s). Its forward is the masked mean of the last hidden states, then the
projector, with no normalisation: exactly this project's ``AirRepModel``.

What each route does with such a folder:

- ``AirRepModel.from_pretrained(folder)`` (this repository's ``modeling_airrep``) reads it directly:
  the weight names are the same; the unused pooler is skipped with transformers' unexpected-keys
  warning, and ``encode`` needs a tokenizer beside the weights.
- ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` fails: the config names no code.
- ``SentenceTransformer(folder)`` finds no ``modules.json`` and silently builds a plain BERT with
  mean pooling, dropping the projector: its embeddings are not AirRep's.

:func:`convert_checkpoint` (``python -m airrep.convert model SRC OUT``) writes the same weights as a
complete folder that all three load alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from airrep.cli import UsageError
from airrep.outputs import write_text

logger = logging.getLogger(__name__)

AUTHORS_ENCODER = "thenlper/gte-small"
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}
# Config keys that describe the saved file, not the model; the converted config sets its own.
_NOT_MODEL_KEYS = {"model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version",
                   "_name_or_path"}  # fmt: skip


def _local_folder(source: str) -> Path:
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as error:
        raise UsageError(f"{source!r} is not a folder, and no model repo of that name could be fetched or found "
                         f"in the Hub cache ({type(error).__name__}: {error})") from None  # fmt: skip


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's ``model.safetensors`` (possibly sharded) or ``pytorch_model.bin``."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("model*.safetensors"))
    if files:
        weights: dict[str, torch.Tensor] = {}
        for file in files:
            weights |= load_file(file)
        return weights
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise UsageError(f"{folder}: no model.safetensors or pytorch_model.bin to convert")


def convert_checkpoint(
    source: str,
    output_dir: str,
    tokenizer: str | None = None,
    dtype: str = "auto",
    base_model: str = AUTHORS_ENCODER,
) -> Path:
    """Write the authors'-layout checkpoint ``source`` as a Hub-native AirRep folder ``output_dir``.

    Args:
        source: A folder or Hub id in the authors' layout.
        output_dir: Where the converted folder goes (``auto_map``, both code files, ``modules.json``,
            the tokenizer and a card).
        tokenizer: The tokenizer to ship when ``source`` has none (a folder or Hub id); the authors
            use ``thenlper/gte-small``'s.
        dtype: ``auto`` keeps the stored precision; ``float32`` or ``bfloat16`` casts.
        base_model: The encoder the checkpoint was trained from, for the card's ``base_model``.

    Raises:
        UsageError: a folder in another layout (named, with what it holds), no weights, or no tokenizer.
    """
    from transformers import AutoTokenizer

    from modeling_airrep import AirRepConfig, AirRepModel

    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = _local_folder(source)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{source}: no config.json; not a model folder")
    config = json.loads(config_file.read_text())
    if config.get("auto_map"):
        raise UsageError(f"{source} is already a Hub-native AirRep folder (its config has auto_map): load it with "
                         "AutoModel.from_pretrained(..., trust_remote_code=True)")  # fmt: skip
    if config.get("model_type") not in ("airrep", "bert"):
        raise UsageError(f"{source}: config model_type is {config.get('model_type')!r}; the authors' layout is a "
                         "BERT config with model_type 'airrep'")  # fmt: skip
    weights = read_weights(folder)
    encoder = {k for k in weights if k.startswith("bert.")}
    lacking = [k for k in ("projector.weight", "projector.bias") if k not in weights] + ([] if encoder else ["bert.*"])
    other = sorted(set(weights) - encoder - {"projector.weight", "projector.bias"})
    if lacking or other:
        problems = ([f"lacks {', '.join(lacking)}"] if lacking else []) + ([f"also holds {other[:3]}"] if other else [])
        raise UsageError(f"{source}: not the authors' layout (bert.* and projector.weight/bias only): it "
                         + " and ".join(problems))  # fmt: skip
    pooler = sorted(k for k in encoder if k.startswith("bert.pooler."))
    if pooler:
        logger.info("dropping %d pooler tensor(s) (%s): AirRep mean-pools and never uses the pooler",
                    len(pooler), ", ".join(pooler))  # fmt: skip
    stored = weights["projector.weight"].dtype
    settings = {k: v for k, v in config.items() if k not in _NOT_MODEL_KEYS}
    settings |= {"projection_dim": weights["projector.weight"].shape[0], "base_model": base_model}
    model = AirRepModel(AirRepConfig(**settings))
    model.load_state_dict({k: v for k, v in weights.items() if k not in pooler}, strict=True)
    model = model.to(DTYPES[dtype] or stored)
    has_own = (folder / "tokenizer_config.json").is_file()
    tokenizer_source = tokenizer or (str(folder) if has_own else AUTHORS_ENCODER)
    try:
        model.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except (OSError, ValueError) as error:
        raise UsageError(f"{source} has no tokenizer and {tokenizer_source!r} could not be loaded ({error}); pass "
                         f"--tokenizer FOLDER_OR_ID (the authors use {AUTHORS_ENCODER}'s)") from None  # fmt: skip
    out = Path(output_dir)
    model.save_pretrained(out)
    card = out / "README.md"
    write_text(
        card,
        card.read_text() + f"\nConverted from the AirRep authors' release layout (`{source}`) by "
        f"`python -m airrep.convert model`: weights in {model.dtype}, tokenizer from `{tokenizer_source}`.\n",
    )
    logger.info("wrote %s (%s weights, tokenizer from %s)", out, model.dtype, tokenizer_source)
    return out

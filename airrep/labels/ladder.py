"""A ladder of target LMs: one corpus and recipe, target LMs whose parameter counts grow by fixed factors.

The paper's argument for AirRep is about scale: a gradient method pays a backward pass through the
target LM for every example, while AirRep's encoder costs the same whatever the target LM is. One
tiny target LM cannot show where that trade turns, so the benchmark runs on a ladder of rungs:

* ``x1`` is the preset's own target LM (``LabelPreset.target_lm``);
* ``xN`` keeps the tokenizer, head size, MLP ratio, context length and warm-start recipe of ``x1``
  and grows depth and width until the parameter count is about N times larger.

Depth grows as ``N ** (1/3)`` and width takes up the rest, the usual way model families scale
(wider more than deeper). The Qwen2.5-0.5B architecture is a further rung for cost measurements
only (``QWEN25_05B``): it has no weights we could train here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from airrep.labels.target_lm import TargetLMSpec

DEFAULT_FACTORS = (1, 10, 100)

# The Qwen2.5-0.5B architecture (config.json of Qwen/Qwen2.5-0.5B), for cost measurements with random
# weights. 494M parameters, 136M of them in the tied embedding.
QWEN25_05B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

# SmolLM2-135M-Instruct's architecture (config.json of HuggingFaceTB/SmolLM2-135M-Instruct, the target LM
# of the real rung), for the same cost measurements. 134.5M parameters, 28.3M of them in the tied embedding.
SMOLLM2_135M: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def rung_name(factor: int) -> str:
    """``x1``, ``x10``, ...: the name of a rung, used in folder names and reports."""
    return f"x{factor}"


def rung_factor(name: str) -> int:
    """The factor of a rung named by :func:`rung_name` (``"x10"`` -> 10).

    Raises:
        ValueError: ``name`` is not ``x`` followed by a whole number.
    """
    if not (name.startswith("x") and name[1:].isdigit()):
        raise ValueError(f"{name!r} is not a ladder rung: use xN, N the factor")
    return int(name[1:])


def count_parameters(spec: TargetLMSpec) -> int:
    """Parameters of the Llama that :func:`airrep.labels.target_lm.build_target_lm` builds from ``spec``.

    Closed form, checked against a built model in the tests: a tied embedding, per layer four square
    attention projections (no key/value grouping, no biases), a gated MLP of three matrices and two
    RMSNorm weights, and the final norm.
    """
    vocab = spec.vocab_size  # the BPE trainer counts the special tokens in its vocabulary size
    d, m = spec.hidden_size, spec.intermediate_size
    per_layer = 4 * d * d + 3 * d * m + 2 * d
    return vocab * d + spec.num_layers * per_layer + d


def scale_spec(base: TargetLMSpec, factor: float) -> TargetLMSpec:
    """``base`` grown to about ``factor`` times its parameters (see the module docstring).

    Raises:
        ValueError: ``factor`` is below 1, or ``base`` has a width its head count does not divide.
    """
    if factor < 1:
        raise ValueError(f"a rung's factor must be at least 1, got {factor}")
    if base.hidden_size % base.num_heads:
        raise ValueError(f"hidden_size {base.hidden_size} is not a multiple of num_heads {base.num_heads}")
    if factor == 1:
        return base
    head_dim = base.hidden_size // base.num_heads
    mlp_ratio = base.intermediate_size / base.hidden_size
    layers = max(base.num_layers, round(base.num_layers * factor ** (1 / 3)))
    target = factor * count_parameters(base)

    def grown(heads: int) -> TargetLMSpec:
        width = heads * head_dim
        return replace(base, hidden_size=width, num_heads=heads, num_layers=layers,
                       intermediate_size=round(mlp_ratio * width))  # fmt: skip

    # Parameters grow monotonically with the head count, so walk up until the target is passed and
    # keep whichever neighbour is closer in ratio.
    heads = base.num_heads
    while count_parameters(grown(heads + 1)) < target:
        heads += 1
    below, above = grown(heads), grown(heads + 1)
    return min((below, above), key=lambda s: abs(count_parameters(s) / target - 1))


def ladder(base: TargetLMSpec, factors: tuple[int, ...] = DEFAULT_FACTORS) -> dict[str, TargetLMSpec]:
    """The rungs ``{name: spec}`` for ``factors``, smallest first."""
    if len(set(factors)) != len(factors):
        raise ValueError(f"factors repeat: {factors}")
    return {rung_name(f): scale_spec(base, f) for f in sorted(factors)}


def target_lm_folder_name(factor: int, corpus: str | None = "synthetic") -> str:
    """Where ``generate_labels.py`` builds a rung's target LM for a corpus, next to its output folder.

    ``x1`` on the synthetic corpus keeps the historical name ``target-lm`` so that folders made before
    the ladder still resume. Another built-in corpus adds its name (``target-lm-realtext-x10``): its
    tokenizer and warm start differ. A user's corpus (``None``) shares the plain names; the data
    fingerprint recorded in the folder refuses a mix-up.
    """
    parts = ["target-lm"]
    if corpus not in (None, "synthetic"):
        parts.append(corpus)
    if factor != 1:
        parts.append(rung_name(factor))
    return "-".join(parts)

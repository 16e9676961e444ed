"""LoRA subset training: stacked adapters against one-at-a-time peft training, and a frozen base."""

import copy
import dataclasses
import random

import numpy as np
import pytest
import torch
from helpers import tiny_target
from torch.func import functional_call
from transformers import AutoModelForCausalLM

from airrep.evaluation.gradient_methods import per_example_gradients
from airrep.labels.dataset import read_summary
from airrep.labels.subset_training import (
    PassThrough,
    SFTSettings,
    cache_frozen_layers,
    finetune,
    finetune_adapters,
    frozen_cache_bytes,
    merged_parameters,
    train_and_score,
    with_lora,
)
from airrep.labels.target_lm import collate, response_losses

SETTINGS = SFTSettings(epochs=2, batch_size=8, learning_rate=1e-2, lora_rank=4, lora_alpha=8.0, lora_seed=3)


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer Llama with a BPE tokenizer on the built-in corpus, its pool and queries."""
    model, tokenizer, pool, queries = tiny_target(60, 10, seed=1, layers=2)
    return model, tokenizer.pad_token_id, pool, queries


def peft_one_at_a_time(model, pool, queries, subset, seed, settings, pad_id):
    """The reference: peft's own LoRA model, trained alone with a plain loop (padded batches, every position's
    logits), the data order and learning-rate schedule of the subset trainer."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.lora_seed)
    targets, top = "all-linear", {}
    if settings.lora_layers:  # peft wants module names with layers_to_transform: a Llama's linear layers
        n = model.config.num_hidden_layers
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        top = {"layers_to_transform": list(range(n - settings.lora_layers, n)), "layers_pattern": "layers"}
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, target_modules=targets,
                        lora_dropout=0.0, bias="none", **top)  # fmt: skip
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    rng = random.Random(seed)
    steps = -(-len(subset) // settings.batch_size) * settings.epochs
    step = 0
    for _ in range(settings.epochs):
        order = [int(i) for i in subset]
        rng.shuffle(order)
        for begin in range(0, len(order), settings.batch_size):
            ids, labels = collate([pool[i] for i in order[begin : begin + settings.batch_size]], pad_id)
            summed, counts = response_losses(peft_model(input_ids=ids).logits, labels)
            (summed.sum() / counts.sum()).backward()
            for group in optimizer.param_groups:
                group["lr"] = settings.learning_rate * (1 - step / steps)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
    with torch.no_grad():
        ids, labels = collate(queries, pad_id)
        summed, counts = response_losses(peft_model(input_ids=ids).logits, labels)
    return (summed / counts).double().numpy(), peft_model


def test_stacked_lora_models_equal_peft_models_trained_one_at_a_time(tiny):
    model, pad_id, pool, queries = tiny
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(pool), 24, replace=False)) for _ in range(3)]
    query_sets = [np.arange(len(queries))] * 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stacked = train_and_score(model, pool, queries, subsets, query_sets, [5, 6, 7], SETTINGS, pad_id)
    reference = np.stack(
        [
            peft_one_at_a_time(model, pool, queries, s, seed, SETTINGS, pad_id)[0]
            for s, seed in zip(subsets, [5, 6, 7], strict=True)
        ]
    )
    np.testing.assert_allclose(stacked, reference, rtol=2e-5)
    assert not np.allclose(stacked[0], stacked[1])  # different subsets, different models
    # Training moved the adapters: the losses differ from the untrained target LM's.
    with torch.no_grad():
        ids, labels = collate(queries, pad_id)
        summed, counts = response_losses(model(input_ids=ids).logits, labels)
    assert np.abs(stacked[0] - (summed / counts).double().numpy()).max() > 1e-2
    for name, tensor in model.state_dict().items():  # the target LM itself is untouched
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_only_the_adapters_are_stacked_and_trained(tiny):
    model = tiny[0]
    adapted = with_lora(model, SETTINGS)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # rank 4 on the 7 linear layers of each of the 2 blocks: q, k, v, o (32 -> 32), gate, up (32 -> 64), down
    assert sum(p.numel() for n, p in adapted.named_parameters() if n in trainable) == 2 * 4 * (
        4 * (32 + 32) + 2 * (32 + 64) + (64 + 32)
    )
    assert type(adapted) is type(model)  # the same forward: packing and logits_to_keep still apply


def test_finetune_under_lora_returns_merged_weights_with_the_base_unchanged(tiny):
    model, pad_id, pool, queries = tiny
    subset = np.arange(20)
    checkpoints = finetune(model, pool, subset, 9, SETTINGS, pad_id)
    weights, _ = checkpoints[-1]
    assert set(weights) == set(dict(model.named_parameters()))
    base = dict(model.named_parameters())
    changed = {n for n in weights if not torch.equal(weights[n], base[n])}
    assert changed and all(n.endswith("_proj.weight") for n in changed)  # norms and embeddings stay frozen
    # The merged model is the LoRA model: its query losses are those train_and_score records ...
    with torch.no_grad():
        ids, labels = collate(queries, pad_id)
        summed, counts = response_losses(functional_call(model, weights, (ids,)).logits, labels)
    expected = train_and_score(model, pool, queries, [subset], [np.arange(len(queries))], [9], SETTINGS, pad_id)
    np.testing.assert_allclose((summed / counts).double().numpy(), expected[0], rtol=1e-5)
    # ... and peft's own merge of the same adapters gives the same weights.
    _, reference = peft_one_at_a_time(model, pool, queries, subset, 9, SETTINGS, pad_id)
    merged = reference.merge_and_unload().state_dict()
    for name in changed:
        torch.testing.assert_close(weights[name], merged[name], rtol=1e-5, atol=1e-6)


def test_adapter_gradients_are_those_of_the_fine_tuned_lora_model(tiny):
    """What grad-dot-lora and its kin differentiate: the adapters finetune_adapters returns, in the adapted model."""
    model, pad_id, pool, queries = tiny
    subset = np.arange(20)
    adapted, checkpoints = finetune_adapters(model, pool, subset, 9, SETTINGS, pad_id)
    adapters, _ = checkpoints[-1]
    assert len(checkpoints) == SETTINGS.epochs
    assert set(adapters) == {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in adapters)
    merged = finetune(model, pool, subset, 9, SETTINGS, pad_id)[-1][0]  # the same run, merged
    for name, weight in merged_parameters(adapted, adapters).items():
        torch.testing.assert_close(weight, merged[name], rtol=0, atol=0)
    # One plain backward per example through the adapted model carrying the final adapters.
    reference = copy.deepcopy(adapted)
    reference.set_attn_implementation("eager")
    lora = {n: p for n, p in reference.named_parameters() if n in adapters}
    with torch.no_grad():
        for name, parameter in lora.items():
            parameter.copy_(adapters[name])
    expected = []
    for example in queries[:5]:
        reference.zero_grad()
        ids, labels = collate([example], pad_id)
        summed, count = response_losses(reference(input_ids=ids).logits, labels)
        (summed[0] / count[0]).backward()
        expected.append(torch.cat([lora[name].grad.reshape(-1) for name in adapters]))
    expected = torch.stack(expected)
    got = per_example_gradients(reference, adapters, queries[:5], pad_id)
    assert got.shape == (5, sum(a.numel() for a in adapters.values()))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    with pytest.raises(ValueError, match="needs LoRA settings"):
        finetune_adapters(model, pool, subset, 9, dataclasses.replace(SETTINGS, lora_rank=0), pad_id)


def test_adapters_in_the_top_layer_only_train_only_it_as_peft_does(tiny):
    model, pad_id, pool, queries = tiny
    top = dataclasses.replace(SETTINGS, lora_layers=1)
    trainable = {n for n, p in with_lora(model, top).named_parameters() if p.requires_grad}
    assert trainable and all(".layers.1." in n for n in trainable)
    subset = np.arange(24)
    stacked = train_and_score(model, pool, queries, [subset], [np.arange(len(queries))], [4], top, pad_id)
    reference, _ = peft_one_at_a_time(model, pool, queries, subset, 4, top, pad_id)
    np.testing.assert_allclose(stacked[0], reference, rtol=2e-5)
    weights, _ = finetune(model, pool, subset, 4, top, pad_id)[-1]
    base = dict(model.named_parameters())
    changed = {n for n in weights if not torch.equal(weights[n], base[n])}
    assert changed and all(".layers.1." in n for n in changed)
    assert "of the top 1 decoder layer(s)" in top.trained_parameters()
    with pytest.raises(ValueError, match=r"lora_layers must be in \[1, 2\]"):
        with_lora(model, dataclasses.replace(SETTINGS, lora_layers=3))


def test_cached_frozen_layers_give_the_losses_of_the_whole_model(tiny):
    """Subset models trained from the cached output of the layers below the adapters match those trained
    through every layer: one at a time and stacked, with packed training rows and padded query rows."""
    model, pad_id, pool, queries = tiny
    top = dataclasses.replace(SETTINGS, lora_layers=1)
    cache = cache_frozen_layers(model, top, pool, queries, pad_id)
    assert cache.frozen_layers == 1 and isinstance(cache.model.get_decoder().layers[0], PassThrough)
    tokens = sum(len(e.input_ids) for e in [*pool, *queries])
    assert cache.table_bytes == (tokens + 1) * model.config.hidden_size * 4 and cache.pad_id == tokens
    # Each example's "ids" are the table rows of its own tokens; its labels are untouched.
    assert [len(e.input_ids) for e in cache.queries] == [len(e.input_ids) for e in queries]
    assert [e.labels for e in cache.pool] == [e.labels for e in pool]
    rng = np.random.default_rng(1)
    subsets = [np.sort(rng.choice(len(pool), 24, replace=False)) for _ in range(2)]
    query_sets = [np.arange(len(queries))] * 2
    whole = train_and_score(model, pool, queries, subsets, query_sets, [4, 5], top, pad_id)
    cached = train_and_score(cache.model, cache.pool, cache.queries, subsets, query_sets, [4, 5], top, cache.pad_id)
    np.testing.assert_allclose(cached, whole, rtol=1e-5)
    alone = train_and_score(cache.model, cache.pool, cache.queries, subsets[1:], query_sets[1:], [5], top,
                            cache.pad_id)  # fmt: skip
    np.testing.assert_allclose(alone[0], whole[1], rtol=1e-5)
    # Each subset model's adapted copy shares the cache's frozen weights instead of copying the table.
    adapted = with_lora(cache.model, top)
    table = cache.model.get_decoder().embed_tokens.weight
    assert adapted.get_decoder().embed_tokens.weight.data_ptr() == table.data_ptr() and not table.requires_grad
    embedding = model.get_decoder().embed_tokens.weight  # a target LM's trainable weights are still copied
    assert with_lora(model, top).get_decoder().embed_tokens.weight.data_ptr() != embedding.data_ptr()
    # The cached model is a copy: the target LM keeps its layers and embedding.
    assert not isinstance(model.get_decoder().layers[0], PassThrough)
    assert model.get_decoder().embed_tokens.weight.shape[0] == model.config.vocab_size


def test_frozen_layers_are_cached_only_under_top_layer_adapters_and_a_forward_that_takes_them(tiny):
    model, pad_id, pool, queries = tiny
    with pytest.raises(ValueError, match=r"needs LoRA adapters in the top layers only"):
        cache_frozen_layers(model, dataclasses.replace(SETTINGS, lora_layers=0), pool, queries, pad_id)
    with pytest.raises(ValueError, match=r"lora_layers must be in \[1, 2\]"):
        cache_frozen_layers(model, dataclasses.replace(SETTINGS, lora_layers=3), pool, queries, pad_id)
    # A table larger than the memory at hand is refused before any layer runs; one that just fits is built.
    tokens = sum(len(e.input_ids) for e in [*pool, *queries])
    needed = (tokens + 1) * model.config.hidden_size * 4
    top = dataclasses.replace(SETTINGS, lora_layers=1)
    assert frozen_cache_bytes(model, [*pool, *queries]) == needed
    with pytest.raises(ValueError, match=rf"the table of {len(pool) + len(queries)} examples' hidden states needs"):
        cache_frozen_layers(model, top, pool, queries, pad_id, available_bytes=needed - 1)
    assert cache_frozen_layers(model, top, pool, queries, pad_id, available_bytes=needed).table_bytes == needed
    # OPT adds its learned position embeddings to whatever enters the decoder, cached states included:
    # refused, not trained on states that carry their positions twice.
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32)
    config = OPTConfig(vocab_size=model.config.vocab_size, max_position_embeddings=64, pad_token_id=pad_id, **sizes)
    with pytest.raises(ValueError, match=r"OPTForCausalLM does not give the same logits from cached hidden states"):
        cache_frozen_layers(OPTForCausalLM(config).eval(), dataclasses.replace(SETTINGS, lora_layers=1), pool,
                            queries, pad_id)  # fmt: skip


def test_the_settings_name_what_is_trained():
    assert SFTSettings().trained_parameters().startswith("every weight")
    line = SETTINGS.trained_parameters()
    assert "rank 4, alpha 8" in line and "all-linear" in line and "frozen" in line
    assert SFTSettings.from_recipe({"lora_rank": 8, "epochs": 3}) == SFTSettings(epochs=3, lora_rank=8)
    with pytest.raises(ValueError, match="lora_rank must be at least 1"):
        with_lora(torch.nn.Linear(2, 2), dataclasses.replace(SETTINGS, lora_rank=0))


def test_generate_labels_with_lora_records_what_was_trained(tmp_path):
    from datasets import load_dataset

    from airrep.labels import LabelArguments, generate_labels

    args = LabelArguments(output_dir=str(tmp_path / "labels-lds"), preset="smoke", mode="lds", noise_ceiling=0,
                          lora_rank=2, learning_rate=1e-2)  # fmt: skip
    summary = generate_labels(args)
    assert summary["settings"]["lora_rank"] == 2 and summary["labels"] == 8
    assert summary["trained_parameters"].startswith("LoRA adapters only (peft): rank 2, alpha 4")
    assert "Trained: LoRA adapters only (peft): rank 2" in (tmp_path / "labels-lds" / "README.md").read_text()
    losses = np.array(load_dataset(str(tmp_path / "labels-lds"), "labels", split="train")["losses"])
    assert np.isfinite(losses).all() and losses.std(axis=0).max() > 0  # the subsets' models differ
    # Another rank is another recipe: the folder refuses to mix them.
    with pytest.raises(ValueError, match="refusing to mix"):
        generate_labels(dataclasses.replace(args, lora_rank=4))

    # The gradient methods on the adapters name their parameter set; full grad-dot names its own.
    from airrep.evaluation import EvalArguments, evaluate

    methods = ["grad-dot-lora", "tracin-lora", "grad-dot"]
    report = tmp_path / "report"
    results = evaluate(EvalArguments(labels=str(tmp_path / "labels-lds"), output_dir=str(report), methods=methods,
                                     projection_dim=[16]))  # fmt: skip
    assert results["errors"] == {} and list(results["methods"]) == methods
    details = results["method_details"]
    target = with_lora(AutoModelForCausalLM.from_pretrained(read_summary(tmp_path / "labels-lds")["target_lm"]),
                       SFTSettings.from_recipe(summary["settings"]))  # fmt: skip
    n_adapters = sum(p.numel() for n, p in target.named_parameters() if "lora_" in n)
    named = f"of the {n_adapters:,} LoRA adapter weights (LoRA adapters only (peft): rank 2"
    assert named in details["grad-dot-lora"]["description"]
    assert "LoRA adapter weights" in details["tracin-lora"]["description"] and details["tracin-lora"]["dim"] == 16 * 1
    assert f"of every weight ({summary['target_lm_parameters']:,})" in details["grad-dot"]["description"]
    scores = {name: np.load(report / "scores" / f"{name}.sum.npy") for name in ("grad-dot-lora", "grad-dot")}
    assert not np.allclose(scores["grad-dot-lora"], scores["grad-dot"])

    # LESS: data selection by the adapters' gradient cosines, from the same labels.
    from airrep.serving.selection import SelectArguments, select_data

    selected = select_data(SelectArguments(pool=str(tmp_path / "corpus"), targets="task:add", method="grad-cos-lora",
                                           labels=str(tmp_path / "labels-lds"), projection_dim=16, budget="4",
                                           strategy="max", output_dir=str(tmp_path / "less")))  # fmt: skip
    assert named in selected["method"] and len(set(selected["pool_rows"])) == 4
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for s in load_dataset(str(tmp_path / "less"), split="train")["score"])

"""Shared fixtures: tiny random Llama models built in code (no download, milliseconds).

Tests marked `real` use the embedded SmolLM2-135M (converted once into the cache).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_tiny_llama(n_layers: int = 2, hidden: int = 64, vocab_size: int = 256, seed: int = 0, bias: bool = False):
    """A randomly initialised LlamaForCausalLM: 2 blocks, hidden 64, 4 heads / 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attention_bias=bias,
        mlp_bias=bias,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture
def tiny_model():
    return make_tiny_llama()


@pytest.fixture
def tiny_space(tiny_model):
    from coalora.space import ConfigSpace

    return ConfigSpace.from_model(tiny_model, "tiny-llama")


@pytest.fixture(scope="session")
def real_model_dir():
    """The converted SmolLM2-135M folder (converted on first use, ~20-30 s)."""
    from coalora.models import embedded_model_dir

    return embedded_model_dir(quiet=True)


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    """(model, tokenizer) of SmolLM2-135M in fp32, shared by the whole session: do not mutate."""
    from coalora.models import load_model

    return load_model("smollm2-135m", quiet=True)


def save_tiny_model_dir(path, seed: int = 0, n_layers: int = 2, words: tuple[str, ...] = ()):
    """Save make_tiny_llama(seed) plus a 256-word word-level tokenizer to the folder `path`,
    so code that loads a base model by name (coalora.models.load_model) can use it offline.
    words: real words given the last ids before <unk> (e.g. a task's label words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(255 - len(words))} | {w: 255 - len(words) + i for i, w in enumerate(words)}
    vocab |= {"<unk>": 255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    make_tiny_llama(n_layers=n_layers, seed=seed).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    return path


def save_tiny_checkpoint(root, train_set: tuple[str, ...] = (), perturb: bool = True):
    """A tiny base folder (a byte-level tokenizer, so the packaged task prompts run) under
    `root`/base and a CoA-LoRA checkpoint on it under `root`/ckpt, its metadata naming an
    SST-2 training run over the presets `train_set`. perturb: B and θ made non-trivial (as if
    trained; B starts at 0). -> (checkpoint folder, base folder, space)."""
    from coalora.lora import CoaLoraModel, LoraSpec, save_checkpoint
    from coalora.models import load_model
    from coalora.space import ConfigSpace
    from test_eval import VOCAB, make_byte_tokenizer

    base_dir = root / "base"
    make_tiny_llama(vocab_size=VOCAB, seed=1).save_pretrained(base_dir)
    make_byte_tokenizer().save_pretrained(base_dir)
    base, _ = load_model(str(base_dir), quiet=True)
    space = ConfigSpace.from_model(base, str(base_dir))
    cm = CoaLoraModel(base, space, LoraSpec(rank=4, alpha=8.0, theta_hidden=16, theta_init_std=0.2))
    if perturb:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in cm.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    training = {"method": "coalora", "task": "sst2", "args": {"split_seed": 0}}
    if train_set:
        training["train_set"] = [space.preset(n).to_dict() for n in train_set]
    return save_checkpoint(cm, root / "ckpt", metadata={"training": training}), base_dir, space


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A folder holding a saved tiny Llama (seed 0) and tokenizer: a base model 'name' for load_model."""
    return save_tiny_model_dir(tmp_path / "tiny-base")

"""Hugging Face transformers 4.x PyTorch/Flax twins at tiny sizes (hidden 32, 2 layers: built from
config objects, nothing downloaded), each pair from one config, with the inputs they take."""

from __future__ import annotations

import functools

import numpy as np
import torch
import transformers as hf

VOCAB, TOKENS, IMAGE = 99, 12, 16


def _tokens(seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(0, VOCAB, (2, TOKENS))
    mask = np.ones((2, TOKENS), np.int64)
    mask[1, -3:] = 0  # the second sequence padded: the mask matters
    return {"input_ids": ids, "attention_mask": mask}


def _pixels(seed: int = 0, size: int = IMAGE) -> dict[str, np.ndarray]:
    return {"pixel_values": np.random.default_rng(seed).standard_normal((2, 3, size, size)).astype(np.float32)}


TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=VOCAB)
CONFIGS = {  # name: (config, torch class, Flax class, inputs)
    "bert": (lambda: hf.BertConfig(**TEXT), hf.BertModel, hf.FlaxBertModel, _tokens),
    "gpt2": (lambda: hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32), hf.GPT2Model,
             hf.FlaxGPT2Model, _tokens),
    "gpt2_lm_head": (lambda: hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32),
                     hf.GPT2LMHeadModel, hf.FlaxGPT2LMHeadModel, _tokens),  # the head tied to the token embedding
    "distilbert": (lambda: hf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, vocab_size=VOCAB),
                   hf.DistilBertModel, hf.FlaxDistilBertModel, _tokens),
    "albert": (lambda: hf.AlbertConfig(embedding_size=16, **TEXT), hf.AlbertModel, hf.FlaxAlbertModel, _tokens),
    "vit": (lambda: hf.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                 image_size=IMAGE, patch_size=4), hf.ViTModel, hf.FlaxViTModel, _pixels),
    "clip_vision": (lambda: hf.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=37, image_size=IMAGE, patch_size=4),
                    hf.CLIPVisionModel, hf.FlaxCLIPVisionModel, _pixels),
    "resnet": (lambda: hf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
               hf.ResNetModel, hf.FlaxResNetModel, lambda: _pixels(size=32)),
    "regnet": (lambda: hf.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=4),
               hf.RegNetModel, hf.FlaxRegNetModel, lambda: _pixels(size=32)),
}


def torch_twin(name: str):
    make_config, torch_class, _, _ = CONFIGS[name]
    torch.manual_seed(0)
    return torch_class(make_config()).eval()


def flax_twin(name: str, **overrides):
    make_config, _, flax_class, _ = CONFIGS[name]
    config = make_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    return flax_class(config, seed=0)


# for the command line: --torch parity_tests.ports.hugging_face:torch_bert --flax ...:flax_bert
torch_bert, flax_bert = functools.partial(torch_twin, "bert"), functools.partial(flax_twin, "bert")


def twins(name: str, **overrides):
    """(torch model in eval mode, Flax model, inputs) for one architecture; `overrides` change the
    Flax side's config only (a planted mistake)."""
    return torch_twin(name), flax_twin(name, **overrides), CONFIGS[name][3]()

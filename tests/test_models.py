"""The offline tiny BERT's initial position embeddings."""

import math

import torch

from qa_lib.models import SINUSOID_AMPLITUDE, load_qa_model


def test_offline_tiny_starts_with_trainable_sinusoidal_positions(offline_tokenizer):
    model = load_qa_model("offline-tiny", offline_tokenizer, hidden_size=32, intermediate_size=64)
    table = model.bert.embeddings.position_embeddings.weight
    assert table.requires_grad
    position, pair = 7, 3  # dimensions 6 and 7 share the frequency 10000^(-6/32)
    angle = position * 10000 ** (-2 * pair / 32)
    expected = SINUSOID_AMPLITUDE * model.config.initializer_range * torch.tensor([math.sin(angle), math.cos(angle)])
    assert torch.allclose(table[position, 2 * pair : 2 * pair + 2], expected, atol=1e-6)
    # a fixed offset is the same rotation at every position: row products depend on the offset only
    assert torch.allclose(table[10] @ table[14], table[200] @ table[204], atol=1e-5)

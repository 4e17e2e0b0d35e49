"""Where transformers' port differs from the release, we follow the release (DESIGN.md section 3).
Each point is checked against the formula written out here, not against our own helpers."""
import math

import torch

from minimax_m1.model_shards.batch import ForwardBatch
from minimax_m1.model_shards.cache import ContiguousCache
from minimax_m1.model_shards.config import MiniMaxM1Config, layer_decay_factor, lightning_slopes
from minimax_m1.model_shards.layers import LightningAttention, SoftmaxAttention
from minimax_m1.model_shards.model import build_random_model


def _config(**kw) -> MiniMaxM1Config:
    base = dict(vocab_size=50, hidden_size=32, intermediate_size=16, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=2, head_dim=8, attn_types=(0, 0, 1), block_size=4, rope_theta=10000.0)
    base.update(kw)
    return MiniMaxM1Config(**base)


def test_slopes_for_non_power_of_two_heads_follow_the_release():
    # H = 6: P = 4 -> 2^-2, 2^-4, 2^-6, 2^-8; then every other slope of the 8-series: 2^-1, 2^-3.
    assert lightning_slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    # H = 12: P = 8 -> 2^(-(h+1)), h < 8; then the 16-series 2^(-(h+1)/2) at h = 0, 2, 4, 6.
    assert lightning_slopes(12) == [2 ** -(h + 1) for h in range(8)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    # transformers uses 2^(-8(h+1)/H) for every H, which differs here:
    assert lightning_slopes(6) != [2 ** (-8 * (h + 1) / 6) for h in range(6)]


@torch.no_grad()
def _naive_lightning(layer: LightningAttention, x: torch.Tensor, slopes: list[float]) -> torch.Tensor:
    """o_t = sum_{j<=t} exp(-s (t-j)) (q_t . k_j) v_j, then norm, gate, out_proj: the O(T^2) formula."""
    t, hd = x.shape[0], layer.head_dim
    qkv = torch.nn.functional.silu(x @ layer.qkv_proj.weight.T).view(t, len(slopes), 3 * hd)
    q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
    out = torch.zeros(t, len(slopes), hd, dtype=torch.float64)
    for h, s in enumerate(slopes):
        for i in range(t):
            for j in range(i + 1):
                out[i, h] += math.exp(-s * (i - j)) * float(q[i, h] @ k[j, h]) * v[j, h].double()
    flat = out.reshape(t, -1).float()
    normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.norm.weight
    return (torch.sigmoid(x @ layer.output_gate.weight.T) * normed) @ layer.out_proj.weight.T


def test_lightning_layer_uses_release_slopes_and_layer_factor():
    config = _config()
    model = build_random_model(config, seed=3, std=0.2)
    layer_idx = 1
    layer = model.model.layers[layer_idx].self_attn
    # release: s_h * (1 - l/(L-1) + 1e-5), with L = 3, l = 1
    factor = 1 - 1 / 2 + 1e-5
    assert layer_decay_factor(1, 3) == factor
    slopes = [s * factor for s in [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]]
    x = torch.randn(11, config.hidden_size)  # 11 tokens: not a multiple of block_size 4
    cache = ContiguousCache(config, 1, 16, torch.float32)
    with torch.no_grad():
        got = layer(x, ForwardBatch([11], [0], [0]), cache)
    expected = _naive_lightning(layer, x, slopes)
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_partial_rotary_rotates_only_the_first_rotary_dim_dims():
    config = _config(num_attention_heads=4, num_key_value_heads=2, head_dim=16, rotary_dim=8, attn_types=(1, 1, 1))
    model = build_random_model(config, seed=5, std=0.2)
    layer: SoftmaxAttention = model.model.layers[0].self_attn
    t, hd, rd, theta = 7, 16, 8, 10000.0
    x = torch.randn(t, config.hidden_size)

    def rope(vec: torch.Tensor, pos: int) -> torch.Tensor:
        # neox pairs (i, i + rd/2) for i < rd/2, angle pos * theta^(-2i/rd); dims >= rd untouched
        out = vec.clone()
        for i in range(rd // 2):
            angle = pos * theta ** (-2 * i / rd)
            a, b = vec[i], vec[i + rd // 2]
            out[i] = a * math.cos(angle) - b * math.sin(angle)
            out[i + rd // 2] = b * math.cos(angle) + a * math.sin(angle)
        return out

    q = (x @ layer.q_proj.weight.T).view(t, 4, hd)
    k = (x @ layer.k_proj.weight.T).view(t, 2, hd)
    v = (x @ layer.v_proj.weight.T).view(t, 2, hd)
    out = torch.zeros(t, 4, hd)
    for h in range(4):
        kv_h = h // 2
        for i in range(t):
            qi = rope(q[i, h], i)
            scores = torch.stack([rope(k[j, kv_h], j) @ qi for j in range(i + 1)]) / math.sqrt(hd)
            out[i, h] = torch.softmax(scores, 0) @ v[: i + 1, kv_h]
    expected = out.reshape(t, -1) @ layer.o_proj.weight.T
    with torch.no_grad():
        got = layer(x, ForwardBatch([t], [0], [0]), ContiguousCache(config, 1, 16, torch.float32))
    assert float((got - expected).norm() / expected.norm()) < 1e-5
    # and the rotation really is partial: full rotary gives a different answer
    layer.rotary_dim = hd
    full = layer(x, ForwardBatch([t], [0], [0]), ContiguousCache(config, 1, 16, torch.float32))
    assert float((full - expected).norm() / expected.norm()) > 1e-3

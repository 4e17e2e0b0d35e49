"""Incremental decoding with the caches equals a full forward, across block boundaries."""
import pytest
import torch

from minimax_m1.model_shards.batch import ForwardBatch
from minimax_m1.model_shards.model import build_random_model
from minimax_m1.model_shards.tiny import tiny_config


@pytest.mark.parametrize("prompt_len,chunks", [(21, [21]), (5, [5]), (40, [13, 16, 11])])
def test_decode_with_cache_equals_full_forward(prompt_len, chunks):
    config = tiny_config(vocab_size=200, block_size=8)  # 7 lightning layers + 1 softmax
    model = build_random_model(config, seed=11, std=0.1)
    total = prompt_len + 12  # decode 12 tokens past the prompt, crossing block boundaries (block 8)
    ids = torch.randint(0, 200, (1, total), generator=torch.Generator().manual_seed(2))
    full = model(ids).logits[0]  # [total, V]

    cache = model.new_cache(num_slots=3, capacity=total)
    slot, pos = 2, 0
    for n in chunks:  # chunked prefill: lightning state and KV carry across chunks
        out = model.step(ids[0, pos:pos + n], ForwardBatch([n], [pos], [slot]), cache)
        pos += n
        assert torch.allclose(out.logits[0], full[pos - 1], rtol=1e-4, atol=1e-5)
    while pos < total:
        out = model.step(ids[0, pos:pos + 1], ForwardBatch([1], [pos], [slot]), cache)
        assert torch.allclose(out.logits[0], full[pos], rtol=1e-4, atol=1e-5), pos
        pos += 1


def test_batched_mixed_prefill_and_decode_equal_each_sequence_alone():
    config = tiny_config(vocab_size=200, block_size=4)
    model = build_random_model(config, seed=12, std=0.1)
    a = torch.randint(0, 200, (1, 9))
    b = torch.randint(0, 200, (1, 14))
    fa, fb = model(a).logits[0], model(b).logits[0]
    cache = model.new_cache(2, 32)
    model.step(a[0, :8], ForwardBatch([8], [0], [0]), cache)
    # one step: sequence a decodes its 9th token while b prefills 14 tokens
    out = model.step(torch.cat([a[0, 8:9], b[0]]), ForwardBatch([1, 14], [8, 0], [0, 1]), cache)
    assert torch.allclose(out.logits[0], fa[8], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.logits[1], fb[13], rtol=1e-4, atol=1e-5)


def test_one_step_mixing_decodes_a_fresh_one_token_prompt_and_prefill_chunks():
    """The engine's step shape: the leading one-token sequences take the decode path (three decodes,
    and a one-token prompt landing in a slot that still holds an old state), the rest the prefill
    path (a chunk continuing a prompt, and a new prompt), with every projection and MoE run once."""
    config = tiny_config(vocab_size=200, block_size=4)
    model = build_random_model(config, seed=14, std=0.1)
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 200, (n,), generator=g) for n in (7, 10, 6, 1, 12, 9)]
    full = [model(r[None]).logits[0] for r in rows]
    cache = model.new_cache(6, 32)
    # warm-up: rows 0-2 cache all but their last token; row 4 its first 5; slot 3 gets a stale state
    model.step(torch.cat([rows[0][:6], rows[1][:9], rows[2][:5], rows[5][:3], rows[4][:5]]),
               ForwardBatch([6, 9, 5, 3, 5], [0, 0, 0, 0, 0], [0, 1, 2, 3, 4]), cache)
    batch = ForwardBatch([1, 1, 1, 1, 7, 9], [6, 9, 5, 0, 5, 0], [0, 1, 2, 3, 4, 5])
    assert batch.num_decode == 4 and not batch.is_decode
    ids = torch.cat([rows[0][6:], rows[1][9:], rows[2][5:], rows[3], rows[4][5:], rows[5]])
    out = model.step(ids, batch, cache).logits
    for i, f in enumerate(full):
        assert torch.allclose(out[i], f[-1], rtol=1e-4, atol=1e-5), i


def test_left_padded_batch_generates_like_each_row_alone():
    config = tiny_config(vocab_size=200, block_size=4, eos_token_id=())
    model = build_random_model(config, seed=13, std=0.1)
    short, long = torch.randint(1, 200, (5,)), torch.randint(1, 200, (9,))
    ids = torch.stack([torch.cat([torch.zeros(4, dtype=torch.long), short]), long])
    mask = torch.stack([torch.cat([torch.zeros(4), torch.ones(5)]), torch.ones(9)]).long()
    both = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6)
    alone_short = model.generate(input_ids=short[None], max_new_tokens=6)
    alone_long = model.generate(input_ids=long[None], max_new_tokens=6)
    assert both[0, 9:].tolist() == alone_short[0, 5:].tolist()
    assert both[1, 9:].tolist() == alone_long[0, 9:].tolist()

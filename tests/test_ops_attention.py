"""Paged KV cache write, causal GQA prefill and split-K decode: interpreter vs twin.

Caches are filled through shuffled block tables, so every test also exercises the block-table gather;
block sizes 8 / 16 / 32 and head_dim 64 / 96 / 128 cover non-power-of-two and partial tiles.
"""

from __future__ import annotations

import pytest
import torch

from angelcli.ops import cases
from angelcli.ops import reference as ref
from angelcli.ops.attention import attention_prefill, kv_cache_write
from angelcli.ops.decode_attention import attention_decode, default_num_splits


@pytest.mark.parametrize("t,hkv,d,bs", [(1, 1, 64, 16), (33, 4, 128, 16), (20, 2, 96, 8)])
def test_kv_cache_write_matches_twin(t, hkv, d, bs):
    assert cases.run_kv_cache_write(t, hkv, d, bs) == (0.0, 0.0)


@pytest.mark.parametrize("lens,q_lens,hq,hkv,d,bs", [
    ([1], [1], 8, 1, 64, 16),  # a one-token prompt
    ([33], [33], 8, 1, 128, 16),  # a fresh 33-token prompt, GQA 8:1 at head_dim 128
    ([40, 17], [7, 17], 4, 2, 64, 8),  # a follow-up turn on a cached prefix next to a fresh prompt
    ([100], [5], 16, 2, 96, 32),  # speculative verify: 5 new tokens after 95 cached
    ([130, 1, 64], [130, 1, 3], 8, 4, 64, 16),
])
def test_attention_prefill_matches_twin(lens, q_lens, hq, hkv, d, bs):
    err, tol = cases.run_attention_prefill(lens, q_lens, hq, hkv, d, bs)
    assert err <= tol


def test_prefill_is_causal():
    # changing a later key must not change earlier queries' outputs
    kc, vc, table, seq = cases.paged_cache([20], 1, 64, 8, seed=3)
    q = cases.randn(20, 2, 64, seed=4)
    cu = torch.tensor([0, 20], dtype=torch.int32)
    out = attention_prefill(q, kc, vc, table, cu, seq)
    blk = int(table[0, 19 // 8])
    kc[blk, 19 % 8] += 1.0
    vc[blk, 19 % 8] += 1.0
    out2 = attention_prefill(q, kc, vc, table, cu, seq)
    assert torch.equal(out[:19], out2[:19]) and not torch.equal(out[19], out2[19])


@pytest.mark.parametrize("lens,hq,hkv,d,bs,splits", [
    ([1], 8, 1, 64, 16, None),
    ([300, 5, 77], 8, 2, 128, 16, 4),  # splits past the end of the short sequences are empty
    ([1000], 32, 4, 128, 16, 7),  # AntAngelMed heads, uneven split lengths
    ([17, 70], 4, 4, 64, 8, 1),  # no split at all
    ([129], 8, 1, 96, 32, 16),  # more splits than key tiles
])
def test_attention_decode_matches_twin(lens, hq, hkv, d, bs, splits):
    err, tol = cases.run_attention_decode(lens, hq, hkv, d, bs, splits)
    assert err <= tol


def test_decode_equals_prefill_of_last_token():
    kc, vc, table, seq = cases.paged_cache([50, 9], 2, 64, 16, seed=5)
    q = cases.randn(2, 8, 64, seed=6)
    dec = attention_decode(q, kc, vc, table, seq, num_splits=3)
    pre = attention_prefill(q, kc, vc, table, torch.tensor([0, 1, 2], dtype=torch.int32), seq)
    assert (dec.float() - pre.float()).abs().max() <= 2e-2 * pre.float().abs().max()


def test_default_num_splits_bounds():
    cpu = torch.device("cpu")
    assert default_num_splits(1, 4, 131072, cpu) >= 2  # long context at batch 1: split
    assert default_num_splits(64, 4, 131072, cpu) == 1  # enough (sequence, head) pairs already
    assert default_num_splits(1, 4, 100, cpu) == 1  # short context: nothing to split


def test_attention_checks():
    kc, vc, table, seq = cases.paged_cache([4], 2, 64, 8)
    with pytest.raises(ValueError, match="Hq % Hkv"):
        attention_decode(cases.randn(1, 3, 64, seed=0), kc, vc, table, seq)
    with pytest.raises(TypeError, match="block_table"):
        attention_decode(cases.randn(1, 4, 64, seed=0), kc, vc, table.long(), seq)
    with pytest.raises(ValueError, match="^k: shape"):
        kv_cache_write(cases.randn(2, 3, 64, seed=0), cases.randn(2, 3, 64, seed=0), kc, vc, torch.tensor([0, 1]))


def test_reference_decode_matches_naive_softmax():
    # the twin itself against a direct formula (one sequence, one KV head, GQA 2:1)
    kc, vc, table, seq = cases.paged_cache([5], 1, 16, 4, seed=9)
    q = cases.randn(1, 2, 16, seed=10)
    out = ref.attention_decode(q, kc, vc, table, seq)
    k = ref._gather(kc, table[0], 5)[:, 0].float()
    v = ref._gather(vc, table[0], 5)[:, 0].float()
    p = torch.softmax(q[0].float() @ k.T / 4.0, dim=-1)
    assert torch.allclose(out[0].float(), p.to(torch.bfloat16).float() @ v, atol=1e-2)

"""``modelfactory.modules``: attention, rotary embeddings, gated MLP, embeddings, shapes,
ResNet's block; values checked against hand computations."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modelfactory as mf
from modelfactory._app.train import parse_train, train
from modelfactory.configs import compose
from modelfactory.modules.attention import MultiHeadAttention
from modelfactory.modules.embeddings import PatchEmbedding, TokenEmbedding
from modelfactory.modules.feed_forward import GatedMLP
from modelfactory.modules.position import RotaryEmbedding
from modelfactory.modules.resnet import BasicBlock
from modelfactory.modules.shapes import MeanPool, SelectToken, Transpose

D, HEADS, KV, HD = 16, 4, 2, 4


def attention(n_kv: int = KV, seed: int = 0, **kw) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(
        HEADS,
        q_proj=nn.Linear(D, HEADS * HD),
        k_proj=nn.Linear(D, n_kv * HD),
        v_proj=nn.Linear(D, n_kv * HD),
        o_proj=nn.Linear(HEADS * HD, D),
        n_kv_head=n_kv,
        **kw,
    ).eval()


def x_of(b: int = 2, t: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, D, generator=torch.Generator().manual_seed(seed))


def by_hand(m: MultiHeadAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention written out, key/value heads repeated as Llama's repeat_kv does."""
    b, t, _ = x.shape
    group = m.n_head // m.n_kv_head
    q = m.q_proj(x).view(b, t, m.n_head, -1).transpose(1, 2)
    k = m.k_proj(x).view(b, t, m.n_kv_head, -1).transpose(1, 2).repeat_interleave(group, 1)
    v = m.v_proj(x).view(b, t, m.n_kv_head, -1).transpose(1, 2).repeat_interleave(group, 1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    y = scores.masked_fill(~allowed, -torch.inf).softmax(-1) @ v
    return m.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def test_grouped_causal_attention_equals_the_hand_computation() -> None:
    m, x = attention(causal=True), x_of()
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x), by_hand(m, x, causal), atol=1e-6, rtol=0)
    full = attention(n_kv=HEADS)  # plain multi-head attention
    torch.testing.assert_close(full(x), by_hand(full, x, torch.ones(6, 6, dtype=torch.bool)))


def test_fused_qkv_equals_separate_projections() -> None:
    sep = attention(causal=True)
    fused = MultiHeadAttention(
        HEADS,
        qkv_proj=nn.Linear(D, (HEADS + 2 * KV) * HD),
        o_proj=sep.o_proj,
        n_kv_head=KV,
        causal=True,
    )
    with torch.no_grad():
        fused.qkv_proj.weight.copy_(
            torch.cat([sep.q_proj.weight, sep.k_proj.weight, sep.v_proj.weight])
        )
        fused.qkv_proj.bias.copy_(torch.cat([sep.q_proj.bias, sep.k_proj.bias, sep.v_proj.bias]))
    assert fused.head_dim == sep.head_dim == HD
    torch.testing.assert_close(fused(x_of()), sep(x_of()), atol=1e-6, rtol=0)


def test_a_padding_mask_gives_the_unpadded_outputs() -> None:
    m, x = attention(), x_of(b=1, t=6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    padded = m(x, attention_mask=mask)[:, :4]
    torch.testing.assert_close(padded, m(x[:, :4]), atol=1e-6, rtol=0)
    as_4d = m(x, attention_mask=mask.bool()[:, None, None, :])[:, :4]
    torch.testing.assert_close(as_4d, padded, atol=0, rtol=0)


def test_left_padding_in_a_causal_row_gives_no_nan() -> None:
    m = attention(causal=True)
    y = m(x_of(b=1, t=5), attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    assert torch.isfinite(y).all()


def test_dropout_only_while_training() -> None:
    m, x = attention(dropout=0.5), x_of()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(n_kv_head=3), "n_head=4 must be a positive multiple of n_kv_head=3"),
        (dict(k_proj=nn.Linear(D, 12)), r"k_proj gives 12 features; n_kv_head=2 heads of 4"),
        (dict(qkv_proj=nn.Linear(D, 32)), "give q_proj, k_proj and v_proj, or qkv_proj alone"),
        (dict(v_proj=None), "give q_proj, k_proj and v_proj, or qkv_proj alone"),
        (dict(q_proj=nn.Linear(D, 18)), "q_proj gives 18 features, not a multiple of n_head=4"),
    ],
)
def test_projections_that_do_not_fit_the_heads_are_refused(kw: dict, message: str) -> None:
    base = dict(
        q_proj=nn.Linear(D, 16), k_proj=nn.Linear(D, 8), v_proj=nn.Linear(D, 8), n_kv_head=2
    )
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(HEADS, o_proj=nn.Linear(16, D), **{**base, **kw})


def test_rotary_scores_depend_on_relative_positions_only() -> None:
    rope = RotaryEmbedding(8, theta=100.0)
    q, k = torch.randn(8).expand(1, 1, 10, 8), torch.randn(8).expand(1, 1, 10, 8)
    scores = rope(q)[0, 0] @ rope(k)[0, 0].T
    for shift in (1, 3):
        torch.testing.assert_close(scores.diagonal(shift)[:-1], scores.diagonal(shift)[1:])
    assert torch.equal(rope(q)[..., 0, :], q[..., 0, :])  # position 0 is not rotated
    partial = RotaryEmbedding(4)(q)
    assert torch.equal(partial[..., 4:], q[..., 4:])
    with pytest.raises(ValueError, match="sequence length 10 exceeds max_len=9"):
        RotaryEmbedding(8, max_len=9)(q)
    with pytest.raises(ValueError, match="positive even"):
        RotaryEmbedding(7)


def test_gated_mlp_is_swiglu_or_geglu() -> None:
    torch.manual_seed(0)
    gate, up, down = nn.Linear(D, 24), nn.Linear(D, 24), nn.Linear(24, D)
    x = x_of()
    swiglu = GatedMLP(gate, up, down)
    torch.testing.assert_close(swiglu(x), down(F.silu(gate(x)) * up(x)))
    geglu = GatedMLP(gate, up, down, activation=nn.GELU())
    torch.testing.assert_close(geglu(x), down(F.gelu(gate(x)) * up(x)))
    with pytest.raises(ValueError, match="gate_proj gives 24 features and up_proj 8"):
        GatedMLP(gate, nn.Linear(D, 8), down)


def test_token_embedding_sums_tokens_segments_and_positions() -> None:
    torch.manual_seed(0)
    tok, pos, seg = nn.Embedding(10, D), nn.Embedding(6, D), nn.Embedding(2, D)
    emb, ids = TokenEmbedding(tok, pos, seg), torch.tensor([[1, 2, 3], [4, 5, 6]])
    types = torch.tensor([[0, 0, 1], [1, 1, 1]])
    torch.testing.assert_close(emb(ids, types), tok(ids) + seg(types) + pos(torch.arange(3)))
    assert torch.equal(emb(ids), emb(ids, torch.zeros_like(ids)))
    with pytest.raises(ValueError, match="sequence length 7 exceeds the 6 learned positions"):
        emb(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="no segment table"):
        TokenEmbedding(tok)(ids, types)


def test_patch_embedding_makes_class_and_patch_tokens() -> None:
    proj = nn.Conv2d(3, D, kernel_size=4, stride=4)
    emb = PatchEmbedding(proj, image_size=[8, 12], patch_size=4, d_model=D)
    assert emb.n_patches == 6 and emb.pos_embed.shape == (1, 7, D)
    out = emb(torch.randn(2, 3, 8, 12))
    assert out.shape == (2, 7, D)
    torch.testing.assert_close(out[:, 0], (emb.cls_token + emb.pos_embed[:, :1])[:, 0].expand(2, D))
    no_cls = PatchEmbedding(proj, 8, 4, D, cls_token=False)
    assert no_cls(torch.randn(1, 3, 8, 8)).shape == (1, 4, D) and no_cls.cls_token is None
    with pytest.raises(ValueError, match="expected images of 8x8, got 9x9"):
        no_cls(torch.randn(1, 3, 9, 9))
    with pytest.raises(ValueError, match="proj gives 16 channels, d_model is 32"):
        PatchEmbedding(proj, 8, 4, 32)


def test_shape_operations() -> None:
    x = torch.arange(24.0).view(2, 3, 4)
    assert torch.equal(Transpose(1, 2)(x), x.transpose(1, 2))
    assert torch.equal(SelectToken()(x), x[:, 0]) and torch.equal(SelectToken(-1)(x), x[:, -1])
    assert torch.equal(MeanPool()(x), x.mean(1))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(MeanPool()(x, attention_mask=mask), torch.stack([x[0, :2].mean(0), x[1, 0]]))


def test_basic_block_downsamples_only_when_it_must() -> None:
    assert BasicBlock(8, 8).downsample is None
    block = BasicBlock(8, 16, stride=2).eval()
    assert [type(m) for m in block.downsample] == [nn.Conv2d, nn.BatchNorm2d]
    assert block(torch.randn(1, 8, 10, 10)).shape == (1, 16, 5, 5)
    names = {k.split(".")[0] for k in block.state_dict()}
    assert names == {"conv1", "bn1", "conv2", "bn2", "downsample"}


FRESH_LOAD = """
import sys
import modelfactory as mf
assert not any(m.startswith("modelfactory.modules.") for m in sys.modules)
model = mf.load(sys.argv[1])
print(type(model.blocks[0].attn.body.mha).__module__)
"""


def test_a_zoo_checkpoint_loads_in_a_fresh_process_trusting_nothing(tmp_path) -> None:
    """The block modules are among those a checkpoint may name without the caller's trust:
    loading imports them."""
    mf.save(mf.build(compose(["model=llama", "n_layer=1"])), tmp_path / "ckpt")
    out = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.split() == ["modelfactory.modules.attention"]


def test_llama_trains_on_the_lm_task() -> None:
    model = mf.build(compose(["model=llama", "n_layer=1"]))
    t = parse_train({"task": "lm", "steps": 4, "lr": 3e-3, "optimizer": "adam", "batch_size": 2})
    losses = train(model, t, 0, torch.zeros(2, 16, dtype=torch.long))["loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]  # steps 0..4


def test_zoo_blocks_tie_and_round_trip(tmp_path) -> None:
    model = mf.build(compose(["model=llama", "n_layer=1", "tie=embed_head"]))
    assert model.head.weight is model.embed.tok.weight
    back = mf.load(mf.save(model, tmp_path / "tied"))
    assert back.head.weight is back.embed.tok.weight
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back.eval()(ids), model.eval()(ids))

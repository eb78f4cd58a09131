"""Transformer layers and stacks: parity with torch's layers and with BERT/Llama written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.nn import (
    DecoderConfig,
    EmbeddingConfig,
    EncoderConfig,
    LayerConfig,
    RMSNorm,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    TransformerForCausalLM,
)

E, H, F_DIM = 16, 4, 32


def _randomize(module):
    """Fresh non-trivial values for every parameter (norm weights and biases included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == E else 0.0))
    return module


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    theirs = torch.nn.TransformerEncoderLayer(
        E, H, F_DIM, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first, layer_norm_eps=1e-6
    )
    theirs = _randomize(theirs).eval()
    ours = TransformerEncoderLayer.from_torch(theirs).eval()
    assert ours.config.norm_first == norm_first and ours.config.activation == activation
    assert ours.config.norm_eps == 1e-6
    x = torch.randn(3, 6, E)
    padding = torch.zeros(3, 6, dtype=torch.bool)  # torch: True = ignore
    padding[1, 4:] = True
    expected = theirs(x, src_key_padding_mask=padding)
    out = ours(x, mask=~padding[:, None, None, :])
    keep = ~padding  # torch's fused eval path may zero the padded rows; compare the real tokens
    torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_decoder_layer_matches_torch(norm_first):
    theirs = torch.nn.TransformerDecoderLayer(
        E, H, F_DIM, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    )
    theirs = _randomize(theirs).eval()
    ours = TransformerDecoderLayer.from_torch(theirs).eval()
    x, memory = torch.randn(2, 5, E), torch.randn(2, 7, E)
    memory_padding = torch.zeros(2, 7, dtype=torch.bool)
    memory_padding[0, 5:] = True
    expected = theirs(
        x,
        memory,
        tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5),
        tgt_is_causal=True,
        memory_key_padding_mask=memory_padding,
    )
    out = ours(x, memory, causal=True, memory_mask=~memory_padding[:, None, None, :])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _bert_reference(model, ids, token_type_ids, attention_mask):
    """HF BertModel's forward, written out (additive finfo.min mask, exact GELU, post-norm)."""
    eps = model.config.layer.norm_eps
    emb = model.embeddings
    n = ids.shape[1]
    x = emb.tokens.weight[ids] + emb.positions.weight[:n] + emb.token_types.weight[token_type_ids]
    x = F.layer_norm(x, (E,), emb.norm.weight, emb.norm.bias, eps)
    extended = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in model.layers:
        a = layer.self_attn
        b, d = x.shape[0], a.head_dim

        def heads(t):  # called at once, in this iteration
            return t.view(b, n, a.num_heads, d).permute(0, 2, 1, 3)  # noqa: B023

        q, k, v = (heads(F.linear(x, p.weight, p.bias)) for p in (a.q_proj, a.k_proj, a.v_proj))
        probs = torch.softmax(q @ k.transpose(-1, -2) / d**0.5 + extended, dim=-1)
        context = (probs @ v).permute(0, 2, 1, 3).reshape(b, n, -1)
        x = F.layer_norm(F.linear(context, a.out_proj.weight, a.out_proj.bias) + x, (E,), *_wb(layer.attn_norm), eps)
        ffn = layer.ffn
        h = F.gelu(F.linear(x, ffn.up_proj.weight, ffn.up_proj.bias))
        x = F.layer_norm(F.linear(h, ffn.down_proj.weight, ffn.down_proj.bias) + x, (E,), *_wb(layer.ffn_norm), eps)
    return x


def _wb(norm):
    return norm.weight, norm.bias


def test_bert_configuration_computes_bert():
    cfg = EncoderConfig.bert(vocab_size=40, embed_dim=E, num_layers=2, num_heads=H, ffn_dim=F_DIM, max_positions=12)
    bert = _randomize(TransformerEncoder(cfg)).eval()
    ids = torch.randint(0, 40, (2, 7))
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
    attention_mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    out = bert(ids, token_type_ids=token_type_ids, mask=attention_mask.bool()[:, None, None, :])
    expected = _bert_reference(bert, ids, token_type_ids, attention_mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    default_types = bert(ids)  # token types default to 0, as in BERT
    torch.testing.assert_close(default_types, bert(ids, token_type_ids=torch.zeros_like(ids)))


def _hf_rms(x, weight, eps):
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x.to(torch.float32) * torch.rsqrt(variance + eps)).to(x.dtype)


def _llama_reference(model, ids):
    """HF LlamaForCausalLM's forward, written out (rotate_half RoPE, repeat_kv, SwiGLU, RMSNorm)."""
    c = model.model.config.layer
    eps, d = c.norm_eps, c.resolved_head_dim
    b, n = ids.shape
    x = model.model.embeddings.tokens.weight[ids]
    inv_freq = 1.0 / (c.rotary.base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.arange(n).float()[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rotate_half(t):
        return torch.cat((-t[..., d // 2 :], t[..., : d // 2]), dim=-1)

    for layer in model.layers:
        a = layer.self_attn
        h = _hf_rms(x, layer.attn_norm.weight, eps)
        q = (h @ a.q_proj.weight.T).view(b, n, -1, d).transpose(1, 2)
        k = (h @ a.k_proj.weight.T).view(b, n, -1, d).transpose(1, 2)
        v = (h @ a.v_proj.weight.T).view(b, n, -1, d).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        s = q @ k.transpose(2, 3) / d**0.5 + torch.full((n, n), float("-inf")).triu(1)
        o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + o @ a.out_proj.weight.T
        h = _hf_rms(x, layer.ffn_norm.weight, eps)
        m = layer.ffn
        x = x + (F.silu(h @ m.gate_proj.weight.T) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return _hf_rms(x, model.model.norm.weight, eps) @ model.lm_head.weight.T


def _llama(tie=True, **kw):
    cfg = DecoderConfig.llama(
        vocab_size=50, embed_dim=E, num_layers=2, num_heads=H, num_kv_heads=2, ffn_dim=F_DIM,
        rope_base=100000.0, tie_embeddings=tie, **kw,
    )  # fmt: skip
    return _randomize(TransformerForCausalLM(cfg)).eval()


def test_llama_configuration_computes_llama():
    lm = _llama()
    ids = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(lm(ids), _llama_reference(lm, ids), atol=1e-4, rtol=1e-5)


def test_a_decoder_gives_hidden_states_and_the_language_model_its_logits():
    lm = _llama(tie=False)
    assert isinstance(lm.model, TransformerDecoder) and lm.layers is lm.model.layers
    ids = torch.randint(0, 50, (2, 7))
    hidden = lm.model(ids)
    assert hidden.shape == (2, 7, E)  # (B, N, E), as torch.nn.TransformerDecoder: no LM head
    torch.testing.assert_close(lm.hidden_states(ids), hidden)
    torch.testing.assert_close(lm(ids), hidden @ lm.lm_head.weight.T)  # (B, N, V)
    wrapped = TransformerForCausalLM(lm.model)
    assert wrapped.model is lm.model and wrapped.lm_head.weight is not lm.lm_head.weight
    with pytest.raises(qkv.AttentionError, match="decoder: expected a qkv.nn.DecoderConfig or TransformerDecoder"):
        TransformerForCausalLM(lm)


def test_layers_of_a_stack_share_one_rotary_table():
    lm = _llama()
    first, second = (layer.self_attn.rotary for layer in lm.layers)
    assert first is second  # no parameters, one table of angles for the whole stack
    assert not any("rotary" in name for name in lm.state_dict())


def test_tied_and_untied_lm_heads():
    tied, untied = _llama(tie=True), _llama(tie=False)
    assert tied.lm_head.weight is tied.model.embeddings.tokens.weight
    assert untied.lm_head.weight is not untied.model.embeddings.tokens.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) == n_tied + 50 * E


def test_parameter_names_are_the_documented_ones():
    bert = TransformerEncoder(
        EncoderConfig.bert(vocab_size=10, embed_dim=E, num_layers=1, num_heads=H, ffn_dim=F_DIM, max_positions=8)
    )
    assert sorted(bert.state_dict()) == sorted(
        [
            "embeddings.tokens.weight",
            "embeddings.positions.weight",
            "embeddings.token_types.weight",
            "embeddings.norm.weight",
            "embeddings.norm.bias",
        ]
        + [
            f"layers.0.{module}.{p}"
            for module in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "attn_norm",
                "ffn.up_proj",
                "ffn.down_proj",
                "ffn_norm",
            )  # fmt: skip
            for p in ("weight", "bias")
        ]
    )
    llama = _llama(tie=False)
    layer0 = [k for k in llama.state_dict() if k.startswith("model.layers.0.")]
    assert sorted(layer0) == sorted(
        f"model.layers.0.{m}.weight"
        for m in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "attn_norm",
            "ffn.gate_proj",
            "ffn.up_proj",
            "ffn.down_proj",
            "ffn_norm",
        )  # fmt: skip
    )
    assert {"model.embeddings.tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(llama.state_dict())
    assert llama.layers[0].self_attn.k_proj.weight.shape == (2 * 4, E)  # GQA: 2 kv heads of 4


def _gpt_like():
    """Pre-norm LayerNorm, GELU, learned positions, biases, untied head: positions come from the embeddings."""
    layer = LayerConfig(embed_dim=E, num_heads=H, ffn_dim=F_DIM, norm_first=True, activation="gelu_tanh")
    cfg = DecoderConfig(layer=layer, num_layers=2, embeddings=EmbeddingConfig(vocab_size=30, max_positions=16))
    return _randomize(TransformerForCausalLM(cfg)).eval()


@pytest.mark.parametrize("kind", ["contiguous", "paged", "int8"])
@pytest.mark.parametrize("model", ["llama", "gpt"])
def test_decoder_decoding_with_a_model_cache_equals_the_full_sequence(kind, model):
    lm = _llama() if model == "llama" else _gpt_like()
    ids = torch.randint(0, 30, (2, 8))
    full = lm(ids)
    cache = lm.new_cache(kind, batch=2, max_length=10, page_size=3)
    with torch.no_grad():
        steps = [lm(ids[:, :4], cache=cache)] + [lm(ids[:, i : i + 1], cache=cache) for i in range(4, 8)]
    decoded = torch.cat(steps, dim=1)
    assert cache.length == 8
    tol = 0.02 * float(full.detach().abs().max()) if kind == "int8" else 1e-4
    torch.testing.assert_close(decoded, full, atol=tol, rtol=1e-5)
    if kind != "int8":  # greedy choices agree
        assert torch.equal(decoded.argmax(-1), full.argmax(-1))


def test_encoder_decoder_with_cross_attention_decodes_with_a_cache():
    layer = LayerConfig(embed_dim=E, num_heads=H, ffn_dim=F_DIM, norm_first=True)
    enc = TransformerEncoder(EncoderConfig(layer=layer, num_layers=1)).eval()
    dec = TransformerDecoder(
        DecoderConfig(
            layer=layer,
            num_layers=2,
            embeddings=EmbeddingConfig(vocab_size=20, positions="sinusoidal"),
            cross_attention=True,
        )  # fmt: skip
    ).eval()
    assert enc.norm is not None and dec.norm is not None  # pre-norm stacks end with a norm
    memory = enc(torch.randn(2, 6, E))
    memory_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :]
    ids = torch.randint(0, 20, (2, 5))
    full = dec(ids, memory=memory, memory_mask=memory_mask)
    cache = dec.new_cache(batch=2, max_length=5)
    with torch.no_grad():
        steps = [dec(ids[:, i : i + 1], memory=memory, memory_mask=memory_mask, cache=cache) for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rmsnorm_normalizes_in_float32_like_llama():
    norm = RMSNorm(E, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(E))
    x = (torch.randn(3, E) * 50).to(torch.bfloat16)
    norm = norm.to(torch.bfloat16)
    assert torch.equal(norm(x), _hf_rms(x, norm.weight, 1e-5))
    x32 = torch.randn(3, E)
    expected = x32 / torch.sqrt((x32**2).mean(-1, keepdim=True) + 1e-5) * norm.weight.float()
    torch.testing.assert_close(norm.float()(x32), expected)


def test_errors_are_attention_errors_naming_the_argument():
    with pytest.raises(qkv.AttentionError, match="norm: unknown value 'batchnorm'"):
        LayerConfig(embed_dim=E, num_heads=H, ffn_dim=F_DIM, norm="batchnorm")
    with pytest.raises(qkv.AttentionError, match="activation: unknown value 'tanh'"):
        LayerConfig(embed_dim=E, num_heads=H, ffn_dim=F_DIM, activation="tanh")
    with pytest.raises(qkv.AttentionError, match="embed_dim: 18 is not divisible by num_heads = 4"):
        TransformerEncoderLayer(LayerConfig(embed_dim=18, num_heads=H, ffn_dim=F_DIM))
    layer = TransformerDecoderLayer(LayerConfig(embed_dim=E, num_heads=H, ffn_dim=F_DIM))
    with pytest.raises(qkv.AttentionError, match="memory: this decoder layer has no cross-attention"):
        layer(torch.randn(1, 3, E), torch.randn(1, 3, E))
    lm = _llama()
    with pytest.raises(qkv.AttentionError, match=r"input_ids: ids must lie in \[0, 50\), got min 0 and max 50"):
        lm(torch.tensor([[0, 50]]))
    with pytest.raises(qkv.AttentionError, match="cache: expected a qkv.cache.ModelCache with 2 layer caches"):
        lm(torch.tensor([[1]]), cache=_gpt_like().new_cache(max_length=4)[:1])
    with pytest.raises(qkv.AttentionError, match="cache: cannot store 3 new token"):
        lm(torch.tensor([[1, 2, 3]]), cache=lm.new_cache(max_length=2))
    gpt = _gpt_like()
    with pytest.raises(qkv.AttentionError, match="positions: position 16 is beyond the learned table"):
        gpt(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kind", ["contiguous", "int8"])
def test_bfloat16_decoder_decodes_in_its_own_dtype(kind):
    lm = _llama().to(torch.bfloat16)
    ids = torch.randint(0, 50, (1, 6))
    full = lm(ids).detach().float()
    cache = lm.new_cache(kind, max_length=6)
    assert cache[0].dtype == torch.bfloat16
    with torch.no_grad():
        steps = [lm(ids[:, :3], cache=cache)] + [lm(ids[:, i : i + 1], cache=cache) for i in range(3, 6)]
    decoded = torch.cat(steps, dim=1)
    assert decoded.dtype == torch.bfloat16
    torch.testing.assert_close(decoded.float(), full, atol=0.05 * float(full.abs().max()), rtol=0)

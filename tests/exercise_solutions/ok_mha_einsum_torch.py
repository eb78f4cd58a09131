import torch


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    b, n, e = x.shape
    h, d = num_heads, e // num_heads
    q = torch.einsum("bne,ef->bnf", x, w_q).view(b, n, h, d)
    k = torch.einsum("bne,ef->bnf", x, w_k).view(b, n, h, d)
    v = torch.einsum("bne,ef->bnf", x, w_v).view(b, n, h, d)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / d**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b, n, e)
    return out @ w_o

import torch


def multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads, causal=False):
    b, n, e = x.shape
    d = e // num_heads
    q, k, v = (torch.nn.functional.linear(x, w).view(b, n, num_heads, d).transpose(1, 2) for w in (w_q, w_k, w_v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return torch.nn.functional.linear(out.transpose(1, 2).reshape(b, n, e), w_o)

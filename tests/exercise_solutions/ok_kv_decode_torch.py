import torch


def decode_step(q_t, k_t, v_t, cache_k, cache_v):
    cache_k = torch.cat((cache_k, k_t), dim=-2)
    cache_v = torch.cat((cache_v, v_t), dim=-2)
    out = torch.nn.functional.scaled_dot_product_attention(q_t, cache_k, cache_v)
    return out, cache_k, cache_v

import torch


def decode_step(q_t, k_t, v_t, cache_k, cache_v):
    scores = q_t @ cache_k.transpose(-1, -2) / q_t.shape[-1] ** 0.5
    out = torch.softmax(scores, dim=-1) @ cache_v
    return out, torch.cat([cache_k, k_t], dim=-2), torch.cat([cache_v, v_t], dim=-2)

import math

import torch


def padding_mask(lengths, n_k):
    return (torch.arange(n_k)[None, :] < lengths[:, None]).view(-1, 1, 1, n_k)


def masked_attention(q, k, v, lengths):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    mask = padding_mask(lengths, k.shape[-2])
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1)
    w = torch.where(mask.any(-1, keepdim=True), w, torch.zeros_like(w))
    return w @ v

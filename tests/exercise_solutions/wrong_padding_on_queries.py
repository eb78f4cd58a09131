import torch


def padding_mask(lengths, n_k):
    mask = torch.arange(n_k)[None, :] < lengths[:, None]
    return mask[:, None, :, None]


def masked_attention(q, k, v, lengths):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~padding_mask(lengths, k.shape[-2]), float("-inf"))
    return torch.nan_to_num(scores.softmax(-1)) @ v

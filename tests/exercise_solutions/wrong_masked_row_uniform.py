import torch


def attention(q, k, v, mask=None):
    scores = torch.matmul(q, k.transpose(-1, -2)) / (q.size(-1) ** 0.5)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e9)
    return torch.softmax(scores, dim=-1) @ v

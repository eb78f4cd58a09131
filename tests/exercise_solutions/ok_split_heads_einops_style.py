import torch


def split_heads(x, num_heads):
    b, n, e = x.shape
    return x.view(b, n, num_heads, -1).permute(0, 2, 1, 3)


def merge_heads(x):
    return torch.cat(x.unbind(1), dim=-1)

import torch


def split_heads(x, num_heads):
    b, n, e = x.shape
    return x.reshape(b, n, e // num_heads, num_heads).permute(0, 3, 1, 2)


def merge_heads(x):
    b, h, n, d = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, n, h * d)

import torch


def causal_mask(n_q, n_k):
    return torch.tril(torch.ones(n_q, n_k)).bool()

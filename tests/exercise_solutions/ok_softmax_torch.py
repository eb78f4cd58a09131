import torch


def softmax(x, axis=-1):
    top = x.amax(dim=axis, keepdim=True)
    top = torch.nan_to_num(top, neginf=0.0)
    e = torch.exp(x - top)
    return e / e.sum(dim=axis, keepdim=True).clamp_min(1e-300)

import numpy as np


def additive_attention(query, keys, w_q, w_k, v):
    hidden = np.tanh(np.expand_dims(query @ w_q, -2) + np.expand_dims(keys @ w_k, -3))
    weights = hidden @ v
    return weights @ keys, weights

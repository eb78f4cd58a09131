import math

import numpy as np


def attention(q, k, v, mask=None):
    nq, nk = q.shape[-2], k.shape[-2]
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    m = np.ones(lead + (nq, nk), bool) if mask is None else np.broadcast_to(mask, lead + (nq, nk))
    q, k, v = (np.broadcast_to(a, lead + a.shape[-2:]) for a in (q, k, v))
    out = np.zeros(lead + (nq, v.shape[-1]), dtype=np.result_type(q, v))
    for index in np.ndindex(*lead):
        for i in range(nq):
            scores = [float(np.dot(q[index][i], k[index][j])) / math.sqrt(q.shape[-1]) for j in range(nk)]
            allowed = [j for j in range(nk) if m[index][i, j]]
            if not allowed:
                continue
            top = max(scores[j] for j in allowed)
            e = {j: math.exp(scores[j] - top) for j in allowed}
            total = sum(e.values())
            for j in allowed:
                out[index][i] += e[j] / total * v[index][j]
    return out

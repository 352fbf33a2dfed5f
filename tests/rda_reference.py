"""A plain-PyTorch reference of the RDA right-hand side (zero-flux via replicate padding)."""

import torch
import torch.nn.functional as F

REACTION_FUNCTIONS = {"tanh": torch.tanh, "relu": torch.relu, "none": torch.zeros_like}


def rda_reference(theta, coefficients, reaction="tanh"):
    """q(theta) computed with padding and slicing, in theta's dtype."""
    shape = theta.shape
    if theta.dim() == 2:
        t = theta[:, :, None, None]
    elif theta.dim() == 3:
        t = theta[:, :, None, :]
    else:
        t = theta
    cout, cin, H, W = t.shape
    p = F.pad(t.reshape(-1, 1, H, W), (1, 1, 1, 1), mode="replicate").reshape(cout, cin, H + 2, W + 2)
    c = p[:, :, 1:-1, 1:-1]
    up, down = p[:, :, :-2, 1:-1], p[:, :, 2:, 1:-1]
    left, right = p[:, :, 1:-1, :-2], p[:, :, 1:-1, 2:]
    lap = up + down + left + right - 4 * c
    dx = (right - left) * 0.5
    dy = (down - up) * 0.5
    rho = REACTION_FUNCTIONS[reaction](c)
    d, u, v, r = (coefficients[i][:, None, None, None] for i in range(4))
    return (d * lap + u * dx + v * dy + r * rho).reshape(shape)

"""How the suite measures a result against its reference: one relative error for every test."""

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius) in float64, on the CPU when the two live apart (the fp64 references of the GPU
    tests are computed there). A zero reference divides by 1e-300, so a nonzero result against it fails a bound."""
    a, b = a.detach().double(), b.detach().double()
    if a.device != b.device:
        a, b = a.cpu(), b.cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()

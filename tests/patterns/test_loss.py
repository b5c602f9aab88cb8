"""The ``loss`` spelling: cross entropies of a linear layer's logits fused into
``fla_compile.linear_cross_entropy``; outputs and gradients against eager on the user's code;
look-alikes left as written with their reason."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fla_compile.backend import last_report
from fla_compile.numerics import rel_err
from fla_compile.patterns import loss as loss_pattern

V, HD = 37, 16
OPTS = {"inductor": False}


def _model(bias=False):
    return nn.Linear(HD, V, bias=bias).double()


def _inputs(gen, B=2, T=9):
    h = torch.randn(B, T, HD, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=gen)
    y[0, :3] = -100
    return h, y


def _compile(fn, *args):
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options=OPTS)(*args)
    return out, last_report()


def _check(fn, lm, h, y):
    """Rewritten into one fused call; loss and gradients equal eager's (float64 inputs; a region that
    upcasts with .float() rounds through float32 in eager, and the op does not: 1e-6 relative, measured 1e-7)."""
    ref = fn(h, y)
    leaves = [h, *lm.parameters()]
    ref_g = torch.autograd.grad(ref, leaves)
    out, rep = _compile(fn, h, y)
    assert [m.op for m in rep.matches] == ["fla_compile.linear_cross_entropy"], str(rep)
    g = torch.autograd.grad(out, leaves)
    assert out.dtype == ref.dtype and rel_err(out.double(), ref.double()) <= 1e-6
    for a, b in zip(g, ref_g):
        assert a.dtype == b.dtype and rel_err(a, b) <= 1e-6
    return rep


def test_cross_entropy_view():
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(1))
    _check(lambda h, y: F.cross_entropy(lm(h).view(-1, V), y.view(-1)), lm, h, y)


def test_cross_entropy_module_bias_smoothing_sum():
    lm = _model(bias=True)
    h, y = _inputs(torch.Generator().manual_seed(2))
    crit = nn.CrossEntropyLoss(label_smoothing=0.1, reduction="sum")
    _check(lambda h, y: crit(lm(h).view(-1, V), y.view(-1)), lm, h, y)


@pytest.mark.parametrize("num_items", [None, 7.0])
def test_transformers_causal_lm_loss(num_items):
    """transformers' ForCausalLMLoss: labels padded and shifted, logits upcast, sum / num_items or mean."""
    loss_utils = pytest.importorskip("transformers.loss.loss_utils")
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(3))
    n = torch.tensor(num_items, dtype=torch.float64) if num_items else None
    rep = _check(lambda h, y: loss_utils.ForCausalLMLoss(lm(h), y, V, num_items_in_batch=n), lm, h, y)
    assert "loss_utils.py" in rep.matches[0].source


def test_shifted_logits_matmul_transposed_weight():
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(4))
    _check(lambda h, y: F.cross_entropy((h @ lm.weight.T)[:, :-1, :].flatten(0, 1), y[:, 1:].reshape(-1)), lm, h, y)


def test_nll_of_log_softmax_ignore_index():
    lm = _model(bias=True)
    h, y = _inputs(torch.Generator().manual_seed(5))
    y = torch.where(y == -100, 5, y)

    def fn(h, y):
        logits = torch.addmm(lm.bias, h.reshape(-1, HD), lm.weight.t())
        return F.nll_loss(F.log_softmax(logits.float(), dim=-1), y.view(-1), ignore_index=5, reduction="sum")

    _check(fn, lm, h, y)


def test_large_region_probed_small(monkeypatch):
    """A region too large to probe at its traced sizes is probed with fewer tokens and a narrower h."""
    monkeypatch.setattr(loss_pattern, "PROBE_ELEMENTS", 100)
    monkeypatch.setattr(loss_pattern, "PROBE_WIDTH", 8)
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(6), B=3, T=20)
    _check(lambda h, y: F.cross_entropy(lm(h)[:, :-1].reshape(-1, V), y[:, 1:].flatten()), lm, h, y)


def test_logits_in_one_chunk_kept_for_inductor(monkeypatch):
    """With Inductor compiling the rest, a loss whose logits fit in one chunk of the fused op is kept as
    written (fusing saves no memory there); logits past one chunk are fused. Fused or kept, it is a match."""
    import fla_compile
    from fla_compile.lowering.loss import torch_path

    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(8), B=2, T=16)

    def fn(h, y):
        return F.cross_entropy(lm(h).view(-1, V), y.view(-1))

    rep = fla_compile.explain(fn, h, y, options={"inductor": True})
    (m,) = rep.matches
    assert m.kept.startswith("kept as written: its 32 x 37 logits fit in one chunk"), str(rep)
    assert "1 kept as written" in str(rep)
    monkeypatch.setattr(torch_path, "LOGITS_BUDGET", 4 * V * 8)  # 8 rows a chunk: 4 chunks
    rep = fla_compile.explain(fn, h, y, options={"inductor": True})
    assert [(m.op, m.kept) for m in rep.matches] == [("fla_compile.linear_cross_entropy", "")], str(rep)
    rep = fla_compile.explain(fn, h, y, options={"inductor": True, "costs": False})
    assert not rep.matches[0].kept, str(rep)


def _missed(fn, *args, reason):
    ref = fn(*args)
    out, rep = _compile(fn, *args)
    assert not rep.matches, str(rep)
    assert any(reason in m.reason for m in rep.misses), str(rep)
    for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(a, b)


def test_logits_returned_to_caller_left_as_written():
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(7))

    def fn(h, y):
        logits = lm(h)
        return F.cross_entropy(logits.view(-1, V), y.view(-1)), logits

    _missed(fn, h, y, reason="'logits' is also used by 'output'")


def test_z_loss_left_as_written():
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(8))

    def fn(h, y):
        logits = lm(h).view(-1, V)
        return F.cross_entropy(logits, y.view(-1)) + 1e-4 * torch.logsumexp(logits, -1).pow(2).mean()

    _missed(fn, h, y, reason="is also used by 'logsumexp'")


def test_log_softmax_over_tokens_refused_by_the_proof():
    """Structurally a fused loss; only the numbers show the softmax runs over the tokens."""
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(9))
    fn = lambda h, y: F.nll_loss(F.log_softmax(lm(h).view(-1, V), dim=0), y.view(-1))  # noqa: E731
    _missed(fn, h, y, reason="differs from the region on fresh inputs")


def test_meta_the_proof_is_what_refuses(monkeypatch):
    """Without the proof, the softmax over the tokens is rewritten into a wrong loss."""
    monkeypatch.setattr(loss_pattern, "prove", lambda cand: 0.0)
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(9))
    fn = lambda h, y: F.nll_loss(F.log_softmax(lm(h).view(-1, V), dim=0), y.view(-1))  # noqa: E731
    out, rep = _compile(fn, h, y)
    assert rep.matches and not torch.allclose(out, fn(h, y))


def test_class_weights_left_as_written():
    lm = _model()
    h, y = _inputs(torch.Generator().manual_seed(10))
    w = torch.rand(V, dtype=torch.float64)
    _missed(lambda h, y: F.cross_entropy(lm(h).view(-1, V), y.view(-1), weight=w), h, y, reason="class weights")

"""The launch helpers' host-side logic, on stub kernels (no GPU)."""

import logging

import pytest

from fla_compile.lowering.common import launch

errors = pytest.importorskip("triton.runtime.errors")


class _Kernel:
    """Stands in for a JIT function: ``kernel[grid](...)`` raises as Triton does before a launch when the
    config's shared memory (or registers) exceed the device's, and records the configs it was called with."""

    def __init__(self, fits_at: int, resource: str = "shared memory"):
        self.fits_at, self.resource, self.calls = fits_at, resource, []
        self.fn = self.__getitem__  # named like a JITFunction's .fn for the log line

    def __getitem__(self, grid):
        def run(*args, num_stages, **kwargs):
            self.calls.append((grid, args, num_stages, kwargs))
            if num_stages > self.fits_at:
                raise errors.OutOfResources(233984, 232448, self.resource)
            return "launched"

        return run


def test_fitted_lowers_the_stages_until_the_shared_memory_fits(caplog):
    k = _Kernel(fits_at=1)
    with caplog.at_level(logging.INFO, logger=launch.__name__):
        assert launch.fitted(k, (4, 2), "a", 3, num_warps=8, num_stages=3, FLAG=True) == "launched"
    assert [c[2] for c in k.calls] == [3, 2, 1]
    assert all(c[:2] == ((4, 2), ("a", 3)) and c[3] == {"num_warps": 8, "FLAG": True} for c in k.calls)
    assert "num_stages=1" in caplog.text


def test_fitted_launches_once_when_it_fits():
    k = _Kernel(fits_at=2)
    assert launch.fitted(k, (1,), num_warps=4, num_stages=2) == "launched"
    assert [c[2] for c in k.calls] == [2]


@pytest.mark.parametrize("fits_at,resource", [(0, "shared memory"), (1, "registers")])
def test_fitted_raises_what_fewer_stages_cannot_mend(fits_at, resource):
    """One stage still over, or another resource: Triton's error, unchanged."""
    k = _Kernel(fits_at=fits_at, resource=resource)
    with pytest.raises(errors.OutOfResources, match=resource):
        launch.fitted(k, (1,), num_warps=4, num_stages=2)


@pytest.mark.parametrize("stages,fits_at,want", [(1, 2, [(4, 1)]), (2, 1, [(8, 2), (4, 1)]), (2, 2, [(8, 2)])])
def test_fitted_never_runs_a_form_to_avoid(stages, fits_at, want):
    """A form known to compute wrong results (the dh pass's 8 warps and 1 stage under three tf32 products on Triton
    3.6), asked for or reached by lowering the stages, runs on half the warps."""
    k = _Kernel(fits_at=fits_at)
    assert launch.fitted(k, (1,), num_warps=8, num_stages=stages, avoid=((8, 1),)) == "launched"
    assert [(c[3]["num_warps"], c[2]) for c in k.calls] == want


def test_fitted_remembers_the_stages_that_fitted():
    """A launch Triton refused is lowered once: the next call of the same form (kernel, warps, stages asked,
    scalars and dtypes) starts at the stages that fitted; another form (other constexprs or dtypes) finds its own."""
    import torch

    k = _Kernel(fits_at=1)
    x16, x32 = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)
    assert launch.fitted(k, (1,), x16, 64, num_warps=8, num_stages=3) == "launched"
    assert [c[2] for c in k.calls] == [3, 2, 1]
    k.calls.clear()
    assert launch.fitted(k, (2,), x16, 64, num_warps=8, num_stages=3) == "launched"  # another grid: the same form
    assert [c[2] for c in k.calls] == [1]
    for args in ((x32, 64), (x16, 32)):
        k.calls.clear()
        assert launch.fitted(k, (1,), *args, num_warps=8, num_stages=3) == "launched"
        assert [c[2] for c in k.calls] == [3, 2, 1], args
    k.calls.clear()  # the same form on 4 warps is another form
    assert launch.fitted(k, (1,), x16, 64, num_warps=4, num_stages=3) == "launched"
    assert [c[2] for c in k.calls] == [3, 2, 1]


def test_fitted_remembered_stages_still_avoid():
    """The remembered stages go through ``avoid`` as a lowered launch does: 8 warps / 1 stage runs on 4."""
    k = _Kernel(fits_at=1)
    for want in ([(8, 2), (4, 1)], [(4, 1)]):
        k.calls.clear()
        assert launch.fitted(k, (1,), num_warps=8, num_stages=2, avoid=((8, 1),)) == "launched"
        assert [(c[3]["num_warps"], c[2]) for c in k.calls] == want


@pytest.mark.parametrize("n,cap,want", [(32, None, 64), (16, 16, 64), (8, 128, 64), (33, None, 64), (64, 32, 32),
                                        (128, 64, 64), (100, None, 128)])  # fmt: skip
def test_head_block_keeps_narrow_heads_in_masked_blocks_of_64(monkeypatch, n, cap, want):
    """Compiled, a head dim of 32 or less takes one masked block of 64 (Triton 3.6 on sm_90 miscomputed at a block
    equal to a head dim of 32); wider heads keep the table's cap. The interpreter keeps the exact block."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert launch.head_block(n, cap) == want
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launch.head_block(n, cap) == (launch.pow2(n) if cap is None else min(cap, launch.pow2(n)))


def test_fill_sms_never_halves_a_narrow_head_block(monkeypatch):
    """Filling the SMs halves a state pass's blocks down to ``lo``, but not the masked block of a narrow head."""
    import torch

    monkeypatch.setattr(launch, "sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert launch.fill_sms(cuda, 2, 32, 64, 32, 64, lo=16) == (64, 64)
    assert launch.fill_sms(cuda, 2, 128, 64, 32, 64, lo=16) == (64, 16)  # V wide: halved; K narrow: kept
    assert launch.fill_sms(cuda, 2, 128, 64, 128, 64, lo=32) == (32, 32)

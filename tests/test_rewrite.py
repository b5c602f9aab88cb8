"""Pieces of fla_compile/rewrite.py used by every lowering."""

import torch

from fla_compile.rewrite import _unviewed
from fla_compile.verify import reshaped


def test_views_that_restore_the_base_layout_give_the_base():
    base = torch.randn(2, 8, 3, 4)
    assert _unviewed(base.transpose(1, 2).permute(0, 2, 1, 3)) is base
    assert _unviewed(base) is base  # not a view


def test_other_views_stay():
    base = torch.randn(2, 8, 3, 4)
    x = base.transpose(1, 2)
    assert _unviewed(x) is x
    y = base[:, 1:]
    assert _unviewed(y) is y


def test_a_view_that_alone_requires_grad_stays():
    """Passing the base would drop the gradient the user asked for."""
    base = torch.randn(2, 8, 3, 4)
    x = base.view(2, 8, 3, 4).requires_grad_()
    assert _unviewed(x) is x


def test_reshaped_skips_a_reshape_to_the_same_shape():
    x = torch.randn(2, 3, 4)
    assert reshaped(x, 2, 3, 4) is x
    assert reshaped(x, 6, 4).shape == (6, 4)

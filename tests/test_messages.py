"""Near misses name the construct that blocked them in the user's terms."""

import pytest
import torch

import fla_compile

from .patterns import spellings as S


@pytest.mark.parametrize(
    "fn, name",
    [(S.miss_normalized_decayed_state, "z"), (S.miss_normalized_other_key, "norm")],
)
def test_normalizer_in_a_loop_is_named(fn, name):
    q, k, v = (torch.rand(2, 16, 2, 4) for _ in range(3))
    torch._dynamo.reset()
    report = fla_compile.explain(fn, q, k, v)
    torch._dynamo.reset()
    assert not report.matches
    (miss,) = report.near_misses
    assert miss.spelling == "loop"
    assert f"a normalizer {name}_t = {name}_{{t-1}} + k_t" in miss.reason
    assert "not supported in a loop yet" in miss.reason
    assert "block holds" not in miss.reason and "run past" not in miss.reason

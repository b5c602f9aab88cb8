"""The fraction of realistic spellings recognized (issue 14), on the held-out set
``tests/patterns/held_out.py``: each function is compiled with ``backend="fla"`` (cost table off: every proven
region is rewritten) and run on fresh inputs.

  recognized   a positive matched as one region of the expected family (a chunk loop's intra-chunk pieces
               alone are not), outputs and the inputs' gradients equal to eager's; a look-alike whose
               outputs equal eager's (pieces of it, such as a chunk's masked form, may be rewritten: said)
  wrong        outputs or gradients that differ from eager's
  missed       anything else (the report's first miss is printed)
  not runnable eager itself raises on these inputs (a case written for fp32 that mixes fp32 constants into
               bf16 matmuls): not counted

    PYTHONPATH=. python benchmarks/recognition.py                        # CPU, fp32
    PYTHONPATH=. python benchmarks/recognition.py --device cuda --dtype bfloat16
    PYTHONPATH=. python benchmarks/recognition.py --set held_out_2      # the second, independent set

``--set held_out_2`` measures ``tests/patterns/held_out_2.py`` (written by someone who had not read the
recognizers): each case brings its own inputs (``Case.inputs``, T = 8), so ``--T`` does not apply.
"""

import argparse
import inspect
import logging
import os
import sys

os.environ.setdefault("FLA_COMPILE_COSTS", "off")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, ".")
import fla_compile  # noqa: E402
import fla_compile.backend  # noqa: E402,F401  (registers "fla" where the package is not pip-installed)
from tests.compare import flat, rel  # noqa: E402
from tests.patterns import held_out_2, held_out_3, held_out_4  # noqa: E402
from tests.patterns.held_out import CASES, CASES_2  # noqa: E402

log = logging.getLogger("recognition")


def make_inputs(fn, B, T, H, D, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)

    make = {
        "q": lambda: r(B, T, H, D),
        "k": lambda: r(B, T, H, D),
        "v": lambda: r(B, T, H, D),
        "g": lambda: F.logsigmoid(r(B, T, H, D)) * 0.2,
        "gs": lambda: F.logsigmoid(r(B, T, H)) * 0.5,
        "b": lambda: torch.sigmoid(r(B, T, H)),
    }
    names = [p for p in inspect.signature(fn).parameters if p in make]
    return [make[n]().to(device, dtype).requires_grad_() for n in names]


def _values(outs, args, grads):
    """The outputs, nested tuples flattened (None dropped: a final state not asked for) and, with ``grads``, the
    inputs' gradients of a fixed random projection of them."""

    outs = flat(outs)
    if not grads:
        return outs
    gen = torch.Generator().manual_seed(1)
    proj = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
    return outs + list(torch.autograd.grad(sum((o * p).sum() for o, p in zip(outs, proj)), args, allow_unused=True))


def check(fn, expect, args, tol):
    """('recognized' | 'missed' | 'wrong' | 'not runnable', detail). In bf16 / fp16, where eager itself is off by
    its rounding, ours is wrong when it is further from a float64 run on the same inputs than
    ``max(tol, 2 x eager's)``."""
    try:
        ref = fn(*args)
    except Exception as e:  # noqa: BLE001 - the case as written fails without us
        return "not runnable", f"eager raises: {type(e).__name__}: {str(e)[:120]}"
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fla", options={"inductor": False})(*args)
    report = fla_compile.last_report()
    fams = [m.family for m in report.matches]
    # one op call, or one per sequence where the code loops over sequences around its time loop (every match a
    # whole loop): not pieces of one recurrence (a parallel form per chunk)
    whole = fams == [expect] or (
        len(fams) > 1 and set(fams) == {expect} and all(m.spelling == "loop" for m in report.matches)
    )
    grads = expect is not None and whole
    ours, eager = _values(out, args, grads), _values(ref, args, grads)
    if args[0].dtype in (torch.float32, torch.float64):
        errs = [rel(a, b) for a, b in zip(ours, eager) if a is not None and b is not None]
    else:
        a64 = [a.detach().double().requires_grad_(a.requires_grad) for a in args]
        truth = _values(fn(*a64), a64, grads)
        errs = [
            rel(a, t) / max(1.0, 2 * rel(b, t) / tol)
            for a, b, t in zip(ours, eager, truth)
            if a is not None and b is not None and t is not None
        ]
    err = max(errs)
    if not err <= tol:
        return "wrong", f"error {err:.2e} (matches {fams})"
    if expect is None:
        return "recognized", f"pieces rewritten: {fams}" if fams else "left as written"
    if whole:
        return "recognized", f"{expect} ({', '.join(m.spelling for m in report.matches)}), error {err:.1e}"
    why = (
        report.misses[0].reason if report.misses else f"note: {report.notes[0]}" if report.notes else "no miss reported"
    )
    return "missed", f"matches {fams}; {why[:150]}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--T", type=int, default=32)
    p.add_argument("-k", default="", help="only the cases whose name contains this")
    p.add_argument(
        "--set",
        default="all",
        choices=["1", "2", "all", "held_out_2", "held_out_3", "held_out_4"],
        help="held-out set 1, 2, both, or the independent held_out_2 / held_out_3 / held_out_4",
    )
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    counts = {"recognized": 0, "missed": 0, "wrong": 0, "not runnable": 0}
    if a.set in ("held_out_2", "held_out_3", "held_out_4"):
        module = {"held_out_2": held_out_2, "held_out_3": held_out_3, "held_out_4": held_out_4}[a.set]
        cases = [(c.name, c.fn, c.family, c.inputs) for c in module.CASES]
    else:
        cases = [
            (fn.__name__, fn, expect, None) for fn, expect in {"1": CASES, "2": CASES_2, "all": CASES + CASES_2}[a.set]
        ]
    for name, fn, expect, inputs in cases:
        if a.k not in name:
            continue
        if inputs is None:
            args = make_inputs(fn, 1, a.T, 2, 8, a.device, dtype)
        else:
            args = [x.requires_grad_() if x.is_floating_point() else x for x in inputs(dtype, a.device)]
        try:
            verdict, detail = check(fn, expect, args, tol)
        except Exception as e:  # noqa: BLE001 - a crash is a miss, reported
            verdict, detail = "missed", f"crashed: {type(e).__name__}: {str(e)[:150]}"
        counts[verdict] += 1
        print(f"{verdict:10s} {name:45s} {detail}")
    n = sum(counts.values()) - counts["not runnable"]
    skipped = counts["not runnable"]
    print(
        f"\n{counts['recognized']}/{n} recognized ({100 * counts['recognized'] / max(n, 1):.0f}%), "
        f"{counts['wrong']} wrong, {counts['missed']} missed"
        + (f"; {skipped} not runnable as written in {a.dtype} (eager raises)" if skipped else "")
    )
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())

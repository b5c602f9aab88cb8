"""Suite-wide settings.

- Every test starts from the same global RNG state, whatever ran before it, so a test that draws
  from torch's global generator (module initializers, torch.randn without a generator) is
  deterministic alone and in any order. Tests draw their data from their own seeded generators.
- The suite tests matching and rewriting at small sizes, where the cost table
  (``fla_compile.costs``) would keep regions as written: it runs with the choice off (always
  rewrite), subprocesses included. ``tests/test_costs.py`` tests the choice with tables of its own.
- Under pytest-xdist (``-n N``) each worker takes its share of the cores for torch's CPU threads: by
  default every worker would take them all, and the float64 CPU references of the GPU tests stall
  on each other (the rwkv6 reference at T=300: 1.3 s on one thread, 10.8 s on two of a busy 2-core
  machine, 150-260 s per test under 14 workers on the H200 host's 16 cores).
- ``backend="fla"`` is registered here too: pip registers it by entry point, but the GPU box runs the
  suite from a checkout, where a test that compiles with it before any test imported the backend
  failed (``InvalidBackend``, in whichever xdist worker ran it first). It is registered once every
  test is collected: importing the backend loads Triton, which must come after ``tests/lowering``
  sets ``TRITON_INTERPRET`` (else the interpreter fails on ``tl.max`` in a helper).
- Test modules whose interpreter cases or offline compiles run in child processes start them once
  collection is done, at low priority, beside the rest of the run, and the tests that read their results
  run last (``BACKGROUND_TESTS``, ``start_background_reports``, ``tests/child_runs.py``).
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLA_COMPILE_COSTS", "off")

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_finish(session):
    import fla_compile.backend  # noqa: F401  (registers "fla" without the entry point)

    # not under pytest-xdist: every worker collects every test, so each would start them all (the tests start their
    # own children when they run)
    if not session.config.option.collectonly and not os.environ.get("PYTEST_XDIST_WORKER"):
        _start_background_reports(session.items)


def _background_test(item) -> bool:
    """Whether ``item`` reads the results of its module's child processes (the module's ``BACKGROUND_TESTS``)."""
    module = getattr(item, "module", None)
    return getattr(item, "originalname", item.name) in getattr(module, "BACKGROUND_TESTS", ())


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected theirs
def pytest_collection_modifyitems(session, config, items):
    # a module that runs other test files in a child (its ``runs_in_child()`` and ``FILES``, beside it): their
    # in-process copies are left out; then the tests that read child processes' results go last, so the children
    # have the whole run to finish in
    for module in {it.module for it in items if _background_test(it) and hasattr(it.module, "FILES")}:
        if module.runs_in_child():
            files = {str(Path(module.__file__).parent / name) for name in module.FILES}
            moved = [it for it in items if str(it.path) in files]
            module.CHILD_TESTS[:] = [it.nodeid for it in moved]  # from the rootdir: the children run there
            config.hook.pytest_deselected(items=moved)
            items[:] = [it for it in items if str(it.path) not in files]
    items[:] = [it for it in items if not _background_test(it)] + [it for it in items if _background_test(it)]


def _start_background_reports(items):
    """A test module whose cases run in child processes (``start_background_reports(selected)``, given the names of
    its selected ``BACKGROUND_TESTS``) starts them now, at low priority, so they use the core this single-threaded
    run leaves idle instead of holding it up when their tests come (last: CI's machine has two cores)."""
    selected: dict = {}
    for item in items:
        if _background_test(item):
            selected.setdefault(item.module, set()).add(getattr(item, "originalname", item.name))
    for module, names in selected.items():
        module.start_background_reports(names)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    torch.manual_seed(0)
    yield

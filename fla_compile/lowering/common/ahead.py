"""Compiling a call's Triton kernels ahead, on threads, before the call runs.

A fresh process's first call compiles every kernel it launches, one after another (gla's forward and backward: 9
kernels, ~7.6 s of compiles on the H200; kda's: 13, ~12.6 s). :func:`compile_ahead` runs the call once with
every :func:`.launch.fitted` launch turned into a compile (``JITFunction.warmup``) submitted to a thread pool
through Triton's ``AsyncCompileMode``, waits for them, then returns: the real call finds its kernels compiled. A
thread also loads each compiled module and builds its launcher (Triton 3.6 compiles a C launcher per kernel with
the system compiler), so those overlap too. What overlaps is whatever releases the GIL: ptxas and the C compiler
(subprocesses), and the parts of Triton's MLIR and LLVM passes that run without it.

The dry run allocates its own buffers, launches nothing through ``fitted`` and reads no results; an op's
implementation never writes its inputs (the schemas declare no mutation), so a kernel that does launch in the dry
run (one not launched through ``fitted``) writes only the dry run's buffers. Anything that goes wrong in it is
logged and dropped: the real call then compiles what is missing, as it would have.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
import time

import torch

from . import launch

log = logging.getLogger(__name__)


def enabled(device) -> bool:
    """Whether calls on ``device`` compile ahead: CUDA, not the interpreter, not inside a CUDA-graph capture (the
    dry run's allocations and torch ops would be captured), and ``FLA_COMPILE_AHEAD`` not "0"."""
    if device.type != "cuda" or os.environ.get("FLA_COMPILE_AHEAD", "1") == "0":
        return False
    if launch.interpreted():
        return False
    return not torch.cuda.is_current_stream_capturing()


def once(forms: set, form, device, run) -> None:
    """At the first call of ``form`` (not yet in ``forms``, which it joins), compile ``run``'s kernels ahead where
    :func:`enabled` says so on ``device``."""
    if form in forms:
        return
    forms.add(form)
    if enabled(device):
        compile_ahead(run, device)


def _async_mode():
    """Triton's ``AsyncCompileMode`` (None where this Triton lacks it), with ``ignore_errors`` where it takes it."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return None
    if "ignore_errors" in inspect.signature(AsyncCompileMode).parameters:
        return lambda executor: AsyncCompileMode(executor, ignore_errors=True)
    return AsyncCompileMode


class _Loading:
    """An executor for ``AsyncCompileMode``: each job compiles, then loads the module on ``device`` and builds the
    launcher (``_init_handles``) on the same thread. A load that fails (a config over the shared memory) is left
    to the real launch, which raises it where :func:`.launch.fitted` handles it."""

    def __init__(self, pool, device: int | None):
        self.pool, self.device = pool, device

    def submit(self, compile_fn):
        def job():
            kernel = compile_fn()
            try:
                if self.device is not None:  # a thread's current device is its own: the module loads on this one
                    torch.cuda.set_device(self.device)
                kernel._init_handles()
            except Exception as e:  # noqa: BLE001 - the real launch redoes it and reports what it reports
                log.debug("compile ahead: loading %s: %s", getattr(kernel, "name", kernel), e)
            return kernel

        return self.pool.submit(job)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Compile threads for this process: its CPUs shared among the local ranks of a job (torchrun's
    ``LOCAL_WORLD_SIZE``: eight ranks on one host would otherwise start eight pools of up to 16 threads each, all
    at their first call), at most 16."""
    ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    ranks = int(ranks) if ranks.isdigit() and int(ranks) > 0 else 1
    return max(1, min(16, _cpus() // ranks))


def compile_ahead(run, device, workers: int | None = None) -> int:
    """Run ``run()`` (a dry call: its outputs are dropped) with every ``fitted`` launch compiled on a thread
    instead (``workers`` threads; default :func:`default_workers`), and wait for the compiles. Returns the launches
    it submitted: 0 where Triton has no async compile (nothing runs then), those before the failure where the dry
    run failed (nothing is lost but time: the real call compiles the rest at their launches)."""
    mode = _async_mode()
    if mode is None:
        return 0
    workers = workers or default_workers()
    index = None if device.type != "cuda" else device.index if device.index is not None else torch.cuda.current_device()
    seen, t0 = [], time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="fla_compile_ahead") as pool:
        token = launch.COMPILE_ONLY.set(seen)
        try:
            with mode(_Loading(pool, index)), torch.no_grad():
                run()
        except Exception as e:  # noqa: BLE001 - an optimization: the real call compiles what is missing
            log.debug("compile ahead: the dry run stopped: %s", e)
        finally:
            launch.COMPILE_ONLY.reset(token)
    took = time.perf_counter() - t0
    if took > 0.5:  # compiles happened (cached kernels load in milliseconds): say what the first call waits for
        log.info("compiled the kernels of %d launches ahead on %d threads in %.1f s", len(seen), workers, took)
    return len(seen)

"""One CUDA-graph capture recipe for the GPU test and the host-time benchmark (``benchmarks/host_time.py``)."""

from __future__ import annotations

import torch


def capture(step):
    """``step()`` captured once in a CUDA graph, warmed up first on a side stream as torch's docs ask (compiles, table
    lookups and the allocator settle off the capture stream): (the graph, ``step``'s outputs in the graph's memory,
    which each replay rewrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, out

"""Pack and unpack the Triton cache entries of fla_compile's own kernels, to carry compiled kernels between calls.

    python benchmarks/our_triton_cache.py pack $OUT/our-triton-cache.tgz     # at the end of a device call
    python benchmarks/our_triton_cache.py unpack .run/our-triton-cache.tgz   # at its start (h200_env.sh does)
    python benchmarks/our_triton_cache.py pack-autotune $OUT/fla-autotune.tgz --merge benchmarks/fla_autotune_h200.tgz

A GPU call starts on a cold Triton cache, and compiling our kernels for a benchmark or the GPU suite takes minutes of
the session's device time. The whole cache is too large to bring back (~150 MB, most of it FLA's autotune variants),
so this keeps the entries whose kernel is one of ours (a ``@triton.jit`` function of ``fla_compile``): of each, what a
cache hit reads (the metadata json and the binary; its group file rewritten to name those two where it is unpacked),
~70 KB compressed. Entries of kernels whose source changed since are never hit again; ``--max-mib`` keeps the newest
when the archive would be larger. ``pack-autotune`` keeps FLA's autotune results instead (a few KB): merged into
the committed ``benchmarks/fla_autotune_h200.tgz``, which ``h200_env.sh`` unpacks, they spare later calls FLA's
tuning (235 s of the GPU suite's first call went to ``test_against_fla_chunk_rwkv6``'s, twenty-sixth session).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pathlib
import re
import sys
import tarfile

log = logging.getLogger("our_triton_cache")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def our_kernel_names() -> set[str]:
    """The names of the ``@triton.jit`` functions in fla_compile (kernels and the helpers they inline)."""
    jit = re.compile(r"@triton\.jit[^\n]*\n(?:@[^\n]*\n)*def (\w+)\(")
    return {m for path in (ROOT / "fla_compile").rglob("*.py") for m in jit.findall(path.read_text())}


def our_entries(cache: pathlib.Path) -> list[pathlib.Path]:
    """The cache's entry folders holding a kernel of ours, newest first."""
    names = our_kernel_names()
    found = [
        d
        for d in cache.iterdir()
        if d.is_dir()
        and any(f.suffix == ".json" and not f.name.startswith("__grp__") and f.stem in names for f in d.iterdir())
    ]
    return sorted(found, key=lambda d: d.stat().st_mtime, reverse=True)


def _kept(entry: pathlib.Path) -> list[pathlib.Path]:
    """What a cache hit reads of an entry: its metadata json and its binary (the IR texts are for inspection)."""
    return [
        f for f in entry.iterdir() if f.suffix in (".json", ".cubin", ".hsaco") and not f.name.startswith("__grp__")
    ]


def pack(cache: pathlib.Path, out: pathlib.Path, max_mib: float) -> int:
    entries = our_entries(cache)
    kept, size = [], 0
    for d in entries:  # newest first, up to the bound (they compress ~4x: a bound on the raw bytes)
        n = sum(f.stat().st_size for f in _kept(d))
        if size + n > max_mib * 2**20 * 4:
            break
        kept.append(d)
        size += n
    with tarfile.open(out, "w:gz") as tar:
        for d in kept:
            files = _kept(d)
            for f in files:
                tar.add(f, arcname=f"{d.name}/{f.name}")
            # the group file names its children by absolute path: written here with bare names, and made absolute
            # again where it is unpacked (the cache may live elsewhere there)
            for grp in d.glob("__grp__*.json"):
                data = json.dumps({"child_paths": {f.name: f.name for f in files}}).encode()
                info = tarfile.TarInfo(f"{d.name}/{grp.name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    log.info("packed %d of %d entries of our kernels (%.1f MiB of binaries and metadata) into %s (%.1f MiB)",
             len(kept), len(entries), size / 2**20, out, out.stat().st_size / 2**20)  # fmt: skip
    return 0


def unpack(archive: pathlib.Path, cache: pathlib.Path) -> int:
    if not archive.exists():
        log.info("no %s: nothing to unpack", archive)
        return 0
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if not (m.name.startswith("/") or ".." in m.name.split("/"))]
        tar.extractall(cache, members=members, filter="data")
    groups = [cache / m.name for m in members if pathlib.PurePosixPath(m.name).name.startswith("__grp__")]
    for grp in groups:
        children = json.loads(grp.read_text())["child_paths"]
        grp.write_text(json.dumps({"child_paths": {c: str(grp.parent / name) for c, name in children.items()}}))
    log.info("unpacked %d entries of our kernels into %s", len(groups), cache)
    return 0


def pack_autotune(cache: pathlib.Path, out: pathlib.Path, merge: pathlib.Path | None) -> int:
    """FLA's autotune results in the cache (``<key>/<kernel>.autotune.json``, what its kernels' ``cache_results``
    reads before tuning), with those of the ``merge`` archive, into ``out``: a call that tuned FLA on shapes the
    committed ``fla_autotune_h200.tgz`` lacks brings them back, and later calls skip its minutes of tuning."""
    found: dict[str, bytes] = {}
    if merge is not None and merge.exists():
        with tarfile.open(merge) as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.endswith(".autotune.json"):
                    found[m.name] = tar.extractfile(m).read()
    before = len(found)
    for f in sorted(cache.glob("*/*.autotune.json")):
        found[f"{f.parent.name}/{f.name}"] = f.read_bytes()
    with tarfile.open(out, "w:gz") as tar:
        for name in sorted(found):
            info = tarfile.TarInfo(name)
            info.size = len(found[name])
            tar.addfile(info, io.BytesIO(found[name]))
    log.info("packed %d autotune results (%d new) into %s", len(found), len(found) - before, out)
    return 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("pack", "unpack", "pack-autotune"))
    p.add_argument("archive", type=pathlib.Path)
    p.add_argument("--cache", type=pathlib.Path, default=None, help="default: $TRITON_CACHE_DIR, else ~/.triton/cache")
    p.add_argument("--max-mib", type=float, default=15.0, help="pack: the archive's size bound (newest entries first)")
    p.add_argument("--merge", type=pathlib.Path, default=None, help="pack-autotune: an archive whose results to keep")
    args = p.parse_args(argv)
    cache = args.cache or pathlib.Path(os.environ.get("TRITON_CACHE_DIR") or pathlib.Path.home() / ".triton" / "cache")
    if args.action == "pack":
        return pack(cache, args.archive, args.max_mib)
    if args.action == "pack-autotune":
        return pack_autotune(cache, args.archive, args.merge)
    return unpack(args.archive, cache)


if __name__ == "__main__":
    sys.exit(main())

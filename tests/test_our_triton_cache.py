"""benchmarks/our_triton_cache.py without a GPU: only our kernels' entries are packed, each as its metadata json and
binary, and an unpacked entry's group file names those two files where they now lie (what a Triton cache hit
checks), whatever folder the cache had when it was packed."""

from __future__ import annotations

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("our_triton_cache", ROOT / "benchmarks" / "our_triton_cache.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _entry(cache: pathlib.Path, key: str, name: str) -> None:
    d = cache / key
    d.mkdir(parents=True)
    files = {f"{name}.{ext}": d / f"{name}.{ext}" for ext in ("json", "cubin", "ptx", "llir")}
    for f in files.values():
        f.write_text(f"{f.name} of {key}")
    (d / f"__grp__{name}.json").write_text(json.dumps({"child_paths": {n: str(p) for n, p in files.items()}}))


def test_pack_unpack_roundtrip(tmp_path):
    otc = _module()
    ours = "chunk_wy_kernel"
    assert ours in otc.our_kernel_names()
    old = tmp_path / "old-cache"
    _entry(old, "OURS", ours)
    _entry(old, "FLAS", "chunk_gated_delta_rule_fwd_kkt_solve_kernel")  # FLA's: not packed
    archive = tmp_path / "ours.tgz"
    otc.pack(old, archive, max_mib=1.0)
    new = tmp_path / "elsewhere" / "cache"
    otc.unpack(archive, new)
    assert sorted(p.name for p in new.iterdir()) == ["OURS"]
    assert sorted(p.name for p in (new / "OURS").iterdir()) == [f"__grp__{ours}.json", f"{ours}.cubin", f"{ours}.json"]
    children = json.loads((new / "OURS" / f"__grp__{ours}.json").read_text())["child_paths"]
    assert set(children) == {f"{ours}.cubin", f"{ours}.json"}
    for name, path in children.items():
        assert pathlib.Path(path) == (new / "OURS" / name).resolve()
        assert pathlib.Path(path).read_text() == f"{name} of OURS"


def test_unpack_without_archive_is_a_no_op(tmp_path):
    assert _module().unpack(tmp_path / "absent.tgz", tmp_path / "cache") == 0
    assert not (tmp_path / "cache").exists()


def test_pack_autotune_merges(tmp_path):
    """``pack-autotune``: FLA's autotune results of the cache (and none of its kernels' binaries) with the merged
    archive's; a result in both takes the cache's."""
    import tarfile

    otc = _module()
    cache = tmp_path / "cache"
    _entry(cache, "FLAS", "chunk_rwkv6_fwd_kernel")
    (cache / "T1").mkdir()
    (cache / "T1" / "chunk_rwkv6_fwd_kernel.autotune.json").write_text("new")
    (cache / "T2").mkdir()
    (cache / "T2" / "chunk_fwd_kernel_h.autotune.json").write_text("fresh")
    old = tmp_path / "old.tgz"
    otc.pack_autotune(tmp_path / "empty", old, None)  # an empty archive to start from
    with tarfile.open(old, "w:gz") as tar:
        for name, text in (("T0/chunk_gla_fwd_kernel_o.autotune.json", "kept"), ("T2/chunk_fwd_kernel_h.autotune.json",
                                                                                  "stale")):  # fmt: skip
            f = tmp_path / "x"
            f.write_text(text)
            tar.add(f, arcname=name)
    out = tmp_path / "out.tgz"
    assert otc.main(["pack-autotune", str(out), "--cache", str(cache), "--merge", str(old)]) == 0
    with tarfile.open(out) as tar:
        got = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert got == {
        "T0/chunk_gla_fwd_kernel_o.autotune.json": "kept",
        "T1/chunk_rwkv6_fwd_kernel.autotune.json": "new",
        "T2/chunk_fwd_kernel_h.autotune.json": "fresh",
    }

# Sourced at the start of a benchmark call on the lent H200 (see the device tool's README), from the repository root:
#
#     source benchmarks/h200_env.sh && python benchmarks/kernels.py --no-first-call ...
#
# Installs the wheels carried in .whl (flash-linear-attention's fla-core and flash-linear-attention 0.6.0: nothing
# installs from a registry there) into /tmp/site, puts them and this tree on PYTHONPATH, keeps Triton's cache in
# .triton-cache (carry it back and forth to skip recompiles), and unpacks FLA's committed autotune results for the
# H200 into it, so the shapes timed before skip FLA's minutes of first-call tuning. Prints the device and versions.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "h200_env: installing .whl failed" >&2; return 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TRITON_CACHE_DIR="$PWD/.triton-cache"
mkdir -p "$TRITON_CACHE_DIR"
tar -xzf benchmarks/fla_autotune_h200.tgz -C "$TRITON_CACHE_DIR"
# our own kernels compiled by an earlier call, when carried (end a call with `python3 benchmarks/our_triton_cache.py
# pack $OUT/our-triton-cache.tgz`, keep the file in .run/ and name .run in the next call's carry): no recompiles
if [ -f .run/our-triton-cache.tgz ]; then python3 benchmarks/our_triton_cache.py unpack .run/our-triton-cache.tgz; fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

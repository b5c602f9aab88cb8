"""The GLA line (linear_attn, retention, simple_gla, gla): the torch chunked path (:mod:`.torch_path`),
the Triton launchers (:mod:`.triton_launch`) and kernels (:mod:`.triton_kernels`: cumsum, chunk
states, output, backward, fused recurrent decoding; :mod:`.triton_intra`: the vector gate's
intra-chunk kernels), the device dispatch (:mod:`.dispatch`) and the kernels' tuning (:mod:`.tuning`, which
registers itself with the config system on import)."""

from . import tuning  # noqa: F401  (registers the GLA tuner with common/autotune)

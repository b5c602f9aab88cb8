"""The GLA line (linear_attn, retention, simple_gla, gla): the torch chunked path (:mod:`.torch_path`),
the Triton launchers (:mod:`.triton_launch`) and kernels (:mod:`.triton_kernels`: cumsum, chunk
states, output, backward, fused recurrent decoding; :mod:`.triton_intra`: the vector gate's
intra-chunk kernels), and the device dispatch (:mod:`.dispatch`)."""

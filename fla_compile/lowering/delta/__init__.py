"""The delta line (delta_rule, gated_delta_rule, kda): the torch chunked path (:mod:`.torch_path`),
the Triton launchers (:mod:`.triton_launch`) and kernels (:mod:`.triton_wy`, :mod:`.triton_wy_bwd`, :mod:`.triton_decode`),
and the device dispatch (:mod:`.dispatch`)."""

"""The delta line (delta_rule, gated_delta_rule, kda): the torch chunked path (:mod:`.torch_path`),
the Triton launchers (:mod:`.triton_launch`) and kernels (:mod:`.triton_fwd`, :mod:`.triton_bwd`),
and the device dispatch (:mod:`.dispatch`)."""

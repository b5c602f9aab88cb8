"""Primitives every kernel line uses: chunk metadata (:mod:`.chunks`), the gate kinds (:mod:`.gates`),
Triton launch helpers (:mod:`.launch`), compiling a first call's kernels ahead on threads (:mod:`.ahead`), the
``FLA_COMPILE_TRITON`` switch (:mod:`.switch`) and the config system (:mod:`.autotune`, tables in ``configs/``)."""

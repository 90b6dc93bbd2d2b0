"""The operator's tools, each a `mnistflow` command: the team server, the optimizer comparison,
the experiments table and the pipeline's stages, the lock and reproducibility checks, the numerics
check under emulated CPUs, the docs' screenshots."""

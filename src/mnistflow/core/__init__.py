"""What every stage shares: the validated config, its errors, atomic file IO, the device and
the numerics (the CPU kernels' pins)."""

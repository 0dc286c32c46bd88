"""Batches: variant combinations x cases x repeats, run, scored and compared."""

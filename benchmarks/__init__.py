"""Repository-only benchmarks (not installed with the library): ``python -m benchmarks.bench`` from a checkout."""

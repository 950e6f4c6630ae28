"""Test helpers shared by unit tests and benchmarks (imported as `tests.support`)."""

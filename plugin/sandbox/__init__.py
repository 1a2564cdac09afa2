"""Simulators of the systems klarna-capture talks to, for the demo, the tests and the benchmarks."""

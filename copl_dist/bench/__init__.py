"""The benchmarks behind the documented figures (`copl bench ...`)."""

"""Benchmarks of the fixedip gateway against peer proxies (`make bench`, benchmarks/run)."""

"""Benchmarks of the real system (DESIGN.md section 6): each module prints one JSON object to stdout."""

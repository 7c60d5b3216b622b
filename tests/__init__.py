"""Tests: unit, time-skipping and replay tests (`make test-fast`), and tests of the real system."""

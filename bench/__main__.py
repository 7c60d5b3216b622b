"""`python -m bench`: every benchmark, one JSON object (see `bench.all`)."""

from bench.all import main

main()

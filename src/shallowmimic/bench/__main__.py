"""`python -m shallowmimic.bench`."""

from shallowmimic.bench.cli import main

main()

"""`python -m services`: the same as the `metermesh` command."""

from services.cli import main

main()

"""`python -m sessionq ...` is the `sessionq` command."""

from sessionq.producer.cli import main

main()

"""`python -m producer ...` is the `sessionq` command."""

from producer.cli import main

main()

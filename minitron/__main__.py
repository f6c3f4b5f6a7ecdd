"""`python -m minitron ...` (and `torchrun -m minitron ...`) runs the CLI."""

from minitron.cli.main import main

if __name__ == "__main__":
    main()

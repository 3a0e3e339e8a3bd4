"""`python -m underway`: the same command line as the `underway` script."""

from .cli import main

if __name__ == "__main__":
    main()

"""`python -m cli`: the `outbound` command."""

from cli.app import main

if __name__ == "__main__":
    main()

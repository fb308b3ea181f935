"""`python -m markd`: the same program as the `markd` and `mongocryptd` console scripts."""

from markd.cli import main

if __name__ == "__main__":
    main()

"""`python -m codeexec`: the operator, and the user-facing subcommands."""

from codeexec.cli import main

if __name__ == "__main__":
    main()

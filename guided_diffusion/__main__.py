"""`python -m guided_diffusion NAME ...` runs the subcommand NAME."""
import sys

from guided_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())

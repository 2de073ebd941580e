"""`python -m tinykd ...` (also what torchrun and accelerate launch run)."""

from tinykd.cli import main

if __name__ == "__main__":
    main()

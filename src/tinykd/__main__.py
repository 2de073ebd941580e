"""`python -m tinykd ...` (also what torchrun and accelerate launch run)."""

from tinykd.cli import entry

if __name__ == "__main__":
    entry()

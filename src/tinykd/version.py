"""The version, in a module of its own: checkpoints record it, and importing it pulls in nothing else."""

__version__ = "0.1.0"

"""``python -m edncli`` (also what ``torchrun -m edncli`` runs)."""

from .cli.main import run

if __name__ == "__main__":
    run()

"""``python -m unetr`` (also what ``torchrun -m unetr`` starts)."""

from unetr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

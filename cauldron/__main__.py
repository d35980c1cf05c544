"""``python -m cauldron``: the ``cauldron`` command without relying on PATH."""

from cauldron.cli import main

if __name__ == "__main__":
    main()

"""``python -m ltreg`` (and ``accelerate launch -m ltreg``) runs the command line."""

from ltreg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

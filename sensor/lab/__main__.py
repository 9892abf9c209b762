"""`python -m sensor.lab`: the same as `phonehome lab`."""

from sensor.lab.cli import main

if __name__ == "__main__":  # importing it (a walk over the package) runs nothing
    raise SystemExit(main())

"""Old home of the `make demo` flow: now `sensor.lab.demo`; this module re-exports its names."""

from sensor.lab.demo import (
    live,
    main,
)

__all__ = [
    "live",
    "main",
]

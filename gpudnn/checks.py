"""Checks of the numbers users pass as settings, shared by every module.

Each returns the value as a plain ``int`` or ``float`` or raises :class:`ConfigError`
naming the setting. NumPy scalars count as numbers; ``bool`` does not (``lr=True`` is a
mistake, not 1.0); NaN and infinity are refused.
"""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def number(name, value, *, low=None, high=None, low_open=False, high_open=True):
    """A finite real number with ``low <= value`` (``<`` when low_open) and ``value < high``
    (``<=`` unless high_open); bounds left None are not checked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{name} must be {' and '.join(b for b in (lo, hi) if b)}, got {value!r}")
    return v


def positive(name, value):
    """A finite number > 0."""
    return number(name, value, low=0, low_open=True)


def fraction(name, value, *, zero=True):
    """A number in [0, 1) (in (0, 1) unless ``zero``)."""
    return number(name, value, low=0, low_open=not zero, high=1)


def integer(name, value, *, low=0):
    """An integer >= ``low`` (NumPy integers count; integral floats like 3.0 do not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(name, value):
    """An integer >= 1."""
    return integer(name, value, low=1)

"""The one exception type for bad user input, and the reading of numbers from users' JSON that raises it.

The command line turns an `InputError` into one line on stderr and exit status 2, with no traceback.
Its message must name the file or video at fault and the problem, e.g.
"features/video_1.npy: contains NaN or Inf".
"""

from typing import Any


class InputError(Exception):
    """Bad input from the user (data, config, arguments). The message is shown as is."""


def first_line(exc: BaseException) -> str:
    """An exception as one line for an error message: its first non-blank line (MLflow's `message`
    when it has one), else its type's name."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_number(value: Any, what: str) -> float:
    """A number from a user's JSON: int, float or a numeric string (THUMOS' gt.json of ASL/AICL/UM
    writes segment times as strings, "12.3"); InputError "WHAT VALUE is not a number" otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{what} {value!r} is not a number")
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{what} {value!r} is not a number") from None
    except OverflowError:  # an int beyond float's range (a pickled W-TALC array can hold one)
        raise InputError(f"{what} {str(value)[:12]}... is too large (beyond 1.8e308)") from None

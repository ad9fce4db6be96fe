"""Reading a JSON file the user gave (annotations, ground truth, detections, a corpus manifest): what
the file holds, or one InputError naming the file, whatever it holds."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from copl_dist.common.errors import InputError


class _DuplicateKey(ValueError):
    pass


class _TooLarge(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys: a video listed twice would silently change subsets.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _int(text: str) -> int:
    # 10**400 is an int to json but overflows every float() that reads it later (and int() of over
    # 4300 digits is a ValueError): float() of the text says which no float can hold. Floats need no
    # hook: 1e400 reads as inf, as the string "inf" does, and each reader refuses non-finite numbers.
    if math.isinf(float(text)):
        raise _TooLarge(text)
    return int(text)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The file's JSON; InputError "PATH: problem" if it is missing or unreadable, is not JSON,
    repeats a key within an object, holds an integer beyond float's range or is nested too deeply
    for Python's parser. A float beyond float's range reads as inf: the caller checks finiteness."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_no_duplicate_keys, parse_int=_int)
    except _DuplicateKey as e:
        raise InputError(f"{path}: key '{e}' appears twice in one object (a video listed twice?)") from None
    except _TooLarge as e:
        text = str(e)
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} characters)"
        raise InputError(f"{path}: number {shown} is too large (beyond 1.8e308)") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON (nested too deeply to read)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None

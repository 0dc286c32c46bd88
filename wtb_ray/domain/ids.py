"""Identifiers that sort in the order they were made (like UUIDv7): milliseconds since 1970
in 11 hex digits, then random hex digits.

Rows made together (the cells of a batch, the events of one commit) then sit together in
every index keyed by them, so a transaction touching a chunk of them dirties a few index
pages; random ids (uuid4) scattered them over the whole index, one page per row. On the
batch benchmark that was a fifth of the executors' time.
"""

from __future__ import annotations

import secrets
import time

TIME_DIGITS = 11  # 44 bits of milliseconds: until the year 2527


def ordered_hex(width: int) -> str:
    """``width`` hex digits (more than TIME_DIGITS): the time, then random digits."""
    random_digits = width - TIME_DIGITS
    return (f"{time.time_ns() // 1_000_000:0{TIME_DIGITS}x}"
            f"{secrets.randbits(4 * random_digits):0{random_digits}x}")

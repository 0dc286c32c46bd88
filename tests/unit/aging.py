"""Making files old enough for the workspace stat index to trust them."""

import os
import time

OLD = 1_600_000_000 * 10**9  # 2020: long before any clock a snapshot takes


def age(*paths):
    """Give files an old mtime, then wait until the file system's clock has moved past their
    ctime (which that change set), so the stat index may trust them."""
    for p in paths:
        os.utime(p, ns=(OLD, OLD), follow_symlinks=False)
    newest = max(os.lstat(p).st_ctime_ns for p in paths)
    probe = paths[0].parent.parent / "clock-probe"
    while True:
        probe.write_bytes(b"")
        if os.lstat(probe).st_mtime_ns > newest:
            break
        time.sleep(0.001)

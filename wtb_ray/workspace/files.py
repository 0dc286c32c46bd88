"""Writing a restored file: created with its mode, copied in the kernel when a local file
holds its bytes, and checked so that a copy never holds other bytes than the checkpoint's."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import xxhash

from wtb_ray.workspace.index import Key, stat_key


def create(path: str, mode: int) -> int:
    """A new file, with its final permission bits if the umask lets them through (``finish``
    checks)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o777)


def finish(fd: int, mode: int) -> os.stat_result:
    """The written file's stat, its permission bits set if the umask masked some. After the
    writes: a write clears set-user-ID bits. One fstat per file in the common case (a fork
    writes thousands of files; every system call counts)."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
        st = os.fstat(fd)
    return st


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_if_unchanged(src: str, dst: str, mode: int, key: Key) -> os.stat_result | None:
    """Copy ``src`` and keep the copy if ``src`` still is the file whose stat key is ``key``
    once copied; the copy's stat, or None (nothing left at ``dst``). Checking after the copy
    is enough: an index only keeps a key older than its clock, so any change since, during
    the copy included, gave the file a later ctime. (Checking before as well cost a system
    call a file, to spare a copy in the rare case the source had changed.)"""
    def same(fi: int, fo: int) -> bool:
        return stat_key(os.fstat(fi)) == key

    return _copy_checked(src, dst, mode, key[0], same)


def copy_if_same(src: str, dst: str, mode: int, size: int,
                 fingerprints: list[str], chunk_size: int) -> os.stat_result | None:
    """Copy ``src``, then keep the copy only if its chunks have these quick fingerprints:
    for a file its index knows the bytes of but cannot vouch for by stat (written too
    recently). The copy is what is checked, and nothing else writes it, so a change to
    ``src`` during the copy cannot slip through. The copy's stat, or None."""
    def same(fi: int, fo: int) -> bool:
        return _fingerprints(fo, chunk_size) == fingerprints

    return _copy_checked(src, dst, mode, size, same)


def _copy_checked(src: str, dst: str, mode: int, size: int,
                  after: Callable[[int, int], bool]) -> os.stat_result | None:
    """Copy ``size`` bytes of ``src`` to a new ``dst`` and keep the copy if ``after(source
    fd, copy fd)`` accepts it. The copy's stat, or None; on an error nothing is left at
    ``dst`` either."""
    fi = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fo = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o777)
        try:
            _copy_bytes(fi, fo, size)
            st = finish(fo, mode) if after(fi, fo) else None
        except BaseException:
            os.close(fo)
            os.unlink(dst)
            raise
        os.close(fo)
        if st is None:
            os.unlink(dst)
        return st
    finally:
        os.close(fi)


def _fingerprints(fd: int, chunk_size: int) -> list[str]:
    out = []
    offset = 0
    while data := os.pread(fd, chunk_size, offset):
        out.append(xxhash.xxh3_128_hexdigest(data))
        offset += len(data)
    return out


def _copy_bytes(fi: int, fo: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel (copy_file_range, as `cp` does), else by a read
    loop. A source that changed meanwhile is caught by the caller's check of the copy."""
    try:
        left = size
        while left > 0 and (n := os.copy_file_range(fi, fo, min(left, 1 << 30))):
            left -= n
    except OSError:  # not supported here (another file system, an old kernel)
        os.lseek(fi, 0, os.SEEK_SET)
        os.lseek(fo, 0, os.SEEK_SET)
        os.ftruncate(fo, 0)
        while buf := os.read(fi, 1 << 20):
            write_all(fo, buf)

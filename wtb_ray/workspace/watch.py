"""Which paths of a workspace may have changed since the last snapshot, from Linux's inotify.

A running execution's snapshot otherwise stats every file, as git does without a file system
monitor: over a third of a checkpoint after a 1% change in a workspace of ~100 files here.
With a watch on every directory it walked, the next snapshot stats only the paths named by
an event since then, and keeps every directory under which nothing happened as it was,
without a system call (git's core.fsmonitor, Mercurial's fsmonitor, Bazel's watchfs do the
same).

What it may skip: a file is left unexamined only if every directory above it has been
watched since before that file was last examined (by a snapshot or a restore), with no event
naming it or an ancestor, and no file in those directories had more than one link (a write
through a hard link elsewhere notifies only that other directory: such files are always
examined). Anything the watch cannot vouch for makes it give up, and the next snapshot
examines every file again: a full event queue, a watched directory moved (the paths of the
watches would be stale) or gone at the root, a watch limit reached, a snapshot or restore
that failed after the events were read. Not covered, as with any inotify-based monitor:
writes through a shared memory map (no event), changes made by another machine to a network
file system (none either), and a write through a hard link to a workspace file made from
outside while the run is watched (only the other name's directory hears of it; a file that
already had other links when last examined is examined every time): set
WTB_WORKSPACE_WATCH=0 for such workspaces.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from wtb_ray.workspace.threads import ProcessThreads

try:  # Linux only; elsewhere every snapshot examines every file
    from inotify_simple import INotify
    from inotify_simple import flags as _f
except (ImportError, OSError):  # pragma: no cover - not Linux
    INotify = None

log = logging.getLogger(__name__)

if INotify is not None:
    MASK = (_f.MODIFY | _f.ATTRIB | _f.CLOSE_WRITE | _f.CREATE | _f.DELETE | _f.MOVED_FROM
            | _f.MOVED_TO | _f.DELETE_SELF | _f.MOVE_SELF | _f.DONT_FOLLOW | _f.ONLYDIR)
    _GIVE_UP = _f.Q_OVERFLOW | _f.MOVE_SELF
    _DIR_MOVED = _f.MOVED_FROM | _f.MOVED_TO
    _ISDIR, _IGNORED = _f.ISDIR, _f.IGNORED

Ignored = Callable[[str, str, bool], bool]  # IgnoreRules.ignored

# Watches (inotify instances) one process holds at most: the kernel's limit is per user
# (fs.inotify.max_user_instances, 128 by default), shared with every other program the user
# runs. An execution that finds none left runs unwatched.
MAX_PER_PROCESS = 32
_held = 0
_held_lock = threading.Lock()
# Closing an instance waits in the kernel (see Watch.close): done on threads the process
# keeps for it (starting a thread per close took ~60 us here, handing one over ~8).
_closers = ProcessThreads(4, "wtb-watch-close")


class Watch:
    """One inotify instance over one workspace's directories. ``ready`` once a complete pass
    (snapshot or restore) added a watch to each directory before examining it; until then,
    and after giving up, ``changes()`` says nothing can be skipped."""

    def __init__(self, ignored: Ignored) -> None:
        self.ignored = ignored
        self.fd = None  # set before it can fail: __del__ runs on a half-made watch too
        self.fd = INotify(nonblocking=True)
        self.wds: dict[int, str] = {}  # watch descriptor -> directory prefix ("", "a/b/")
        self.ready = False
        self.broken = False

    @classmethod
    def start(cls, ignored: Ignored) -> Watch | None:
        """A new watch, or None where inotify is missing or its instances are used up."""
        global _held
        if INotify is None:
            return None
        with _held_lock:
            if _held >= MAX_PER_PROCESS:
                return None
            try:
                watch = cls(ignored)
            except OSError as exc:  # EMFILE: fs.inotify.max_user_instances reached
                log.info("workspace watch not started (%s): every checkpoint examines every "
                         "file", exc)
                return None
            _held += 1
        return watch

    def add(self, path: str, prefix: str) -> None:
        """Watch the directory ``path`` (``prefix`` in the workspace) before it is listed."""
        if self.broken:
            return
        try:
            wd = self.fd.add_watch(path, MASK)
        except OSError as exc:  # ENOSPC: max_user_watches reached; or it went meanwhile
            self.give_up(f"cannot watch {path}: {exc.strerror or exc}")
            return
        known = self.wds.setdefault(wd, prefix)
        if known != prefix:  # one directory under two names: give up rather than guess
            self.give_up(f"{path} is also watched as {known or '.'}")

    def changes(self) -> set[str] | None:
        """The paths (relative, no trailing "/") events named since the last call, or None if
        the watch cannot vouch for anything (every file must be examined)."""
        dirty = self._drain()  # read even when unready: what came before vouches for nothing
        return dirty if self.ready else None  # giving up clears ``ready``

    def _drain(self) -> set[str]:
        dirty: set[str] = set()
        if self.broken:
            return dirty
        for wd, mask, _, name in self.fd.read(timeout=0):
            if mask & _GIVE_UP or (mask & _ISDIR and mask & _DIR_MOVED):
                self.give_up("a watched directory moved, or too many events")
                return dirty
            prefix = self.wds.get(wd)
            if prefix is None:  # a watch removed earlier
                continue
            if mask & _IGNORED:  # its directory is gone: the parent says so too
                del self.wds[wd]
                if not prefix:
                    self.give_up("the workspace directory itself went away")
                    return dirty
                dirty.add(prefix[:-1])
                continue
            rel = prefix + name if name else prefix[:-1]
            if name and self.ignored(rel, name, bool(mask & _ISDIR)):
                continue
            dirty.add(rel)
        return dirty

    def give_up(self, why: str) -> None:
        """Vouch for nothing from now on; the kernel's watches are released at once."""
        if not self.broken:
            log.debug("workspace watch given up: %s", why)
        self.close()

    def __del__(self) -> None:  # a run that never started leaves its watch to the collector
        with contextlib.suppress(Exception):  # at interpreter exit, module globals may be gone
            self.close()

    def close(self) -> None:
        """Stop watching. The instance is closed on another thread: closing one that had
        watches waits for the kernel's grace period (12-20 ms here, against a few ms for a
        whole short run), which every pause and end of a watched run would otherwise pay. It
        counts as held until it is closed."""
        fd, self.fd = self.fd, None
        self.broken = True
        self.ready = False
        if fd is None:
            return
        try:
            _closers.get().submit(_release, fd)
        except RuntimeError:  # the interpreter is exiting: no new work for threads
            _release(fd)


def _release(fd: INotify) -> None:
    global _held
    try:
        fd.close()
    finally:
        with _held_lock:
            _held -= 1


def dirty_dirs(dirty: set[str]) -> dict[str, set[str]]:
    """Every directory prefix ("", "a/", "a/b/") a snapshot must look into for ``dirty``,
    with the names in it to examine: the ancestors of each path, each with the name of the
    next directory on its way (or of the path itself), and the path itself (it may be a
    directory: one that had an event of its own is listed again)."""
    dirs: dict[str, set[str]] = {"": set()} if dirty else {}
    for rel in dirty:
        if not rel:  # the workspace directory itself
            continue
        dirs.setdefault(rel + "/", set())
        start = 0
        while (end := rel.find("/", start)) >= 0:
            dirs.setdefault(rel[:start], set()).add(rel[start:end])
            start = end + 1
        dirs.setdefault(rel[:start], set()).add(rel[start:])
    return dirs

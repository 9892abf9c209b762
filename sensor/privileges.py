"""Dropping root: become the service user, keeping only CAP_NET_RAW and CAP_NET_ADMIN.

Under systemd the unit does this (User=, AmbientCapabilities=); this is for `phonehome run`
started by hand as root. Sockets opened before the drop keep working; the two capabilities
stay for what is opened later (conntrack dumps, rule changes on reload).

The uid and gid change in every thread (glibc passes setuid/setgid on to all of them), but the
capability bounding set, "keep capabilities" and the capability sets are each thread's own, and
a new thread inherits its creator's. So the bounding set is cut (`cut_bounding_set`) before the
first thread starts, and `drop_to` says so loudly when a thread kept a wider one. Threads other
than the caller lose every capability at the setuid: only the caller keeps its two.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import threading

log = logging.getLogger(__name__)

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
KEEP = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _last_cap() -> int:
    try:
        return int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        return 40


def cut_bounding_set() -> None:
    """Drop every capability but CAP_NET_RAW and CAP_NET_ADMIN from the calling thread's
    bounding set (needs CAP_SETPCAP; doing it again is harmless). It limits only what an
    execve can gain: the effective and permitted sets stay, so a process still root goes on
    reading files and binding ports. Threads started afterwards inherit the cut set."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(_last_cap() + 1):
        if not KEEP & (1 << cap):
            libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)


def wide_bounding_sets() -> dict[str, int]:
    """The threads of this process whose bounding set holds more than KEEP: thread id ->
    CapBnd. Empty once every thread has the cut set."""
    wide: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return wide
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/status") as fh:
                bnd = next(int(x.split()[1], 16) for x in fh if x.startswith("CapBnd:"))
        except (OSError, ValueError, StopIteration):
            continue  # the thread ended meanwhile
        if bnd & ~KEEP:
            wide[tid] = bnd
    return wide


def drop_to(user: str) -> None:
    """setuid/setgid to `user`, keeping CAP_NET_RAW and CAP_NET_ADMIN (effective and
    permitted) and dropping every other capability from the bounding set. Call it from the
    main thread, and `cut_bounding_set` before any other thread starts (module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pw = pwd.getpwnam(user)
    cut_bounding_set()  # before setuid: needs CAP_SETPCAP
    wide = wide_bounding_sets()
    if wide:
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        log.error(
            "threads keep capabilities in their bounding set (started before it was cut): %s",
            ", ".join(f"{tid} ({names.get(tid, '?')}) {bnd:#x}" for tid, bnd in wide.items()),
        )
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(KEEP, KEEP, 0), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def chown_tree(path: os.PathLike[str] | str, user: str, depth: int = 3) -> None:
    """Give `path` and what is below it (a few levels) to `user`."""
    pw = pwd.getpwnam(user)
    root = os.fspath(path)
    base = root.rstrip("/").count("/")
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath.count("/") - base >= depth:
            dirnames[:] = []
        for name in [dirpath, *(os.path.join(dirpath, f) for f in filenames)]:
            with contextlib.suppress(OSError):
                os.chown(name, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def effective_capabilities(pid: int | str = "self") -> int:
    """CapEff of a process, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0

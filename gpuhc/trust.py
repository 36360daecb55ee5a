"""Whom gpuhc believes on disk: the rule sshd's StrictModes applies to ~/.ssh, for the result store,
the local state directory (check state and spool) and ``export --output``.

A directory is trusted when it, and every directory above it, is

- owned by root or by the user gpuhc runs as, and
- not writable by group or others. A directory *above* it may be writable by others when it has
  the sticky bit (``/tmp``): others can add names there but not rename or remove ours.

Symlinks on the way count too: a link must be owned by root or the user, and the directory holding
it is checked like the others (whoever can write there can point the link elsewhere). A file read
from a trusted directory must be a regular file owned by root or the user and not writable by group
or others. Anything else is refused with one line naming the path and the fix.
"""
from __future__ import annotations

import os
import stat
from typing import Optional, Set


def trusted_owner(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _owner_problem(path: str, st: os.stat_result) -> Optional[str]:
    if trusted_owner(st.st_uid):
        return None
    return ("%s: owned by uid %d, not by root%s: another user could change what gpuhc reads there "
            "(chown root %s, or choose a directory of root's)"
            % (path, st.st_uid, " or uid %d (gpuhc)" % os.geteuid() if os.geteuid() else "", path))


def _mode_problem(path: str, st: os.stat_result, above: bool) -> Optional[str]:
    if not st.st_mode & 0o022:
        return None
    if above and st.st_mode & stat.S_ISVTX:
        return None               # /tmp: others may add names, not replace ours
    return ("%s: writable by %s (mode %04o): another user could replace what gpuhc reads there (chmod go-w %s)"
            % (path, "group and others" if st.st_mode & 0o022 == 0o022 else
               "group" if st.st_mode & 0o020 else "others", stat.S_IMODE(st.st_mode), path))


def directory_problem(path: str) -> Optional[str]:
    """None when ``path`` (a directory, or where one will be made) is trusted, else the one line
    that says why not and what to do. The part of the path that does not exist yet is skipped:
    gpuhc makes it with safe modes, and a caller checks again once it exists."""
    checked: Set[str] = set()
    return _chain(os.path.abspath(path), checked, above=False, depth=0)


def path_problem(path: str) -> Optional[str]:
    """For a file gpuhc is about to replace (``export --output``): the directories on the way and
    the links (the file itself, if a link) as above, a sticky directory allowed anywhere (gpuhc
    replaces the name by rename, never writes through it). None, or the one line."""
    return _chain(os.path.abspath(path), set(), above=True, depth=0)


def _chain(path: str, checked: Set[str], above: bool, depth: int) -> Optional[str]:
    """Check ``path`` (lexically, following links by hand) and every directory above it."""
    if depth > 40:
        return "%s: too many levels of symbolic links" % path
    parts = [p for p in path.split(os.sep) if p]
    current = os.sep
    problem = _one(current, checked, above=True)
    if problem:
        return problem
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        candidate = os.path.join(current, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return "%s: cannot check: %s" % (candidate, exc.strerror or exc)
        if stat.S_ISLNK(st.st_mode):
            problem = _owner_problem(candidate, st)
            if problem:
                return problem
            try:
                target = os.readlink(candidate)
            except OSError as exc:
                return "%s: cannot read the link: %s" % (candidate, exc.strerror or exc)
            resolved = os.path.normpath(os.path.join(current, target))
            rest = os.path.join(resolved, *parts[n + 1:]) if not last else resolved
            return _chain(rest, checked, above=above, depth=depth + 1)
        if not stat.S_ISDIR(st.st_mode):
            return None if last else "%s: not a directory" % candidate
        problem = _one(candidate, checked, above=above or not last, st=st)
        if problem:
            return problem
        current = candidate
    return None


def _one(path: str, checked: Set[str], above: bool, st: Optional[os.stat_result] = None) -> Optional[str]:
    key = "%s\0%d" % (path, above)
    if key in checked:
        return None
    if st is None:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return "%s: cannot check: %s" % (path, exc.strerror or exc)
    problem = _owner_problem(path, st) or _mode_problem(path, st, above)
    if problem is None:
        checked.add(key)
    return problem


def file_problem(path: str, st: os.stat_result) -> Optional[str]:
    """For a file gpuhc opened (``st`` from fstat): a regular file, of root or this user, not
    writable by group or others."""
    if not stat.S_ISREG(st.st_mode):
        return "%s: not a regular file" % path
    return _owner_problem(path, st) or _mode_problem(path, st, above=False)

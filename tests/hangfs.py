"""A passthrough FUSE filesystem that can stop answering, as a hung NFS hard mount or a dead FUSE
daemon does: ``python hangfs.py SOURCE MOUNTPOINT FLAG``. Every operation first waits while the
file FLAG exists (outside the mount), so a test hangs the mount by creating FLAG and brings it
back by removing it. Needs fusepy (pip install fusepy) and libfuse2, /dev/fuse and root."""
import errno
import os
import sys
import time

from fuse import FUSE, FuseOSError, Operations


class HangFS(Operations):
    def __init__(self, root, flag):
        self.root = root
        self.flag = flag

    def _path(self, path):
        while os.path.exists(self.flag):      # hung: the caller sleeps in the kernel until we answer
            time.sleep(0.02)
        return os.path.join(self.root, path.lstrip("/"))

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as exc:
            raise FuseOSError(exc.errno or errno.EIO)

    def getattr(self, path, fh=None):
        st = self._call(os.lstat, self._path(path))
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                                             "st_size", "st_uid")}

    def readdir(self, path, fh):
        return [".", ".."] + self._call(os.listdir, self._path(path))

    def readlink(self, path):
        return self._call(os.readlink, self._path(path))

    def mkdir(self, path, mode):
        return self._call(os.mkdir, self._path(path), mode)

    def rmdir(self, path):
        return self._call(os.rmdir, self._path(path))

    def unlink(self, path):
        return self._call(os.unlink, self._path(path))

    def symlink(self, target, source):
        return self._call(os.symlink, source, self._path(target))

    def rename(self, old, new):
        return self._call(os.rename, self._path(old), self._path(new))

    def chmod(self, path, mode):
        return self._call(os.chmod, self._path(path), mode)

    def chown(self, path, uid, gid):
        return self._call(os.lchown, self._path(path), uid, gid)

    def utimens(self, path, times=None):
        return self._call(os.utime, self._path(path), times)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            return self._call(os.ftruncate, fh, length)
        return self._call(os.truncate, self._path(path), length)

    def open(self, path, flags):
        return self._call(os.open, self._path(path), flags)

    def create(self, path, mode, fi=None):
        return self._call(os.open, self._path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        self._path(path)
        return self._call(os.pread, fh, size, offset)

    def write(self, path, data, offset, fh):
        self._path(path)
        return self._call(os.pwrite, fh, data, offset)

    def fsync(self, path, datasync, fh):
        self._path(path)
        return self._call(os.fsync, fh)

    def flush(self, path, fh):
        self._path(path)
        return 0

    def release(self, path, fh):
        return self._call(os.close, fh)

    def statfs(self, path):
        st = self._call(os.statvfs, self._path(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                             "f_files", "f_flag", "f_frsize", "f_namemax")}


if __name__ == "__main__":
    source, mountpoint, flag = sys.argv[1:4]
    FUSE(HangFS(source, flag), mountpoint, foreground=True, nothreads=False, allow_other=True)

//! A directory held open by file descriptor, and the `*at` calls the lease store makes
//! relative to it. Working from a descriptor means a path component swapped for a symlink
//! after we opened the directory cannot redirect us, and every file is opened with
//! `O_NOFOLLOW`, so a symlink planted in the store is refused instead of followed.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name has a NUL"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether `e` is "the file exists".
pub fn is_exists(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EEXIST)
}

/// Whether `e` is "no such file".
pub fn is_not_found(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// Whether `e` is what opening a symlink with `O_NOFOLLOW` (or a non-directory with
/// `O_DIRECTORY`) gives.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

/// What opening a store file that is not a regular file gives: `InvalidData`, naming its kind.
pub fn not_regular(mode: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}, not a regular file", cni::netns::file_kind(mode)),
    )
}

/// Whether `e` is [`not_regular`]'s refusal.
pub fn is_not_regular(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.to_string().ends_with("not a regular file")
}

/// What [`Dir::stat_at`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    /// Set by the kernel to the current time on every change (never settable).
    pub ctime: (i64, i64),
}

impl Stat {
    fn from(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// An open directory.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens the directory at `path`; symlinks on the way are followed (this is for the
    /// configured data dir, which an administrator may well have made a symlink).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL"))?;
        // SAFETY: a valid C string; the fd returned is owned below.
        let fd = check(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        // SAFETY: fd is a new descriptor we own.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the subdirectory `name`, refusing a symlink (`ELOOP`/`ENOTDIR`).
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and C string; the fd returned is owned below.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd is a new descriptor we own.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Creates the subdirectory `name`; an existing one is fine.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and C string.
        match check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }) {
            Ok(_) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens the file `name` with `flags` (`O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` are added), and
    /// refuses it unless it is a regular file. Nothing at a name of the store can make us wait:
    /// a FIFO opens at once (or fails with `ENXIO` for writing, with no reader), and is then
    /// refused like a socket, a device or a directory ([`is_not_regular`]); a symlink fails with
    /// `ELOOP`.
    pub fn open_file(&self, name: &str, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and C string; the fd returned is owned below.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        let fd = match check(fd) {
            Ok(fd) => fd,
            // A FIFO opened for writing without a reader, a directory opened for writing.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::EISDIR)) => {
                let mode = self.stat_at(name).ok().flatten().map(|s| s.mode);
                return Err(not_regular(mode.unwrap_or(0)));
            }
            Err(e) => return Err(e),
        };
        // SAFETY: fd is a new descriptor we own.
        let f = unsafe { File::from_raw_fd(fd) };
        let m = f.metadata()?;
        if !m.file_type().is_file() {
            use std::os::unix::fs::MetadataExt;
            return Err(not_regular(m.mode()));
        }
        Ok(f)
    }

    /// Reads the regular file `name`, at most `max` bytes; `None` when it does not exist.
    /// Symlinks, FIFOs and other non-regular files are refused without blocking.
    pub fn read_small(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let f = match self.open_file(name, libc::O_RDONLY, 0) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    /// Writes `data` as the whole content of `name`, atomically: into the new temp file `tmp`
    /// (which must not exist), renamed over `name` only once it is whole. A reader sees the old
    /// content or the new one, never a part; a failed write (a full disk) leaves `name` as it
    /// was and no temp file behind. A symlink at `name` is replaced (never followed); a FIFO,
    /// socket, device or directory there is refused ([`is_not_regular`]).
    pub fn write_atomic(&self, name: &str, tmp: &str, data: &[u8], mode: u32) -> io::Result<()> {
        if let Some(st) = self.stat_at(name)? {
            if !matches!(st.mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFLNK) {
                return Err(not_regular(st.mode));
            }
        }
        self.create_new(tmp, data, mode)?;
        if let Err(e) = self.rename(tmp, name) {
            let _ = self.unlink(tmp);
            return Err(e);
        }
        Ok(())
    }

    /// Renames `from` to `to` in this directory, replacing the file `to`.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid dirfd and C strings.
        check(unsafe { libc::renameat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr()) }).map(|_| ())
    }

    /// Overwrites the start of an existing file `name` with `data` (no truncation); a missing
    /// file is left missing.
    pub fn overwrite_start(&self, name: &str, data: &[u8]) -> io::Result<()> {
        match self.open_file(name, libc::O_WRONLY, 0) {
            Ok(f) => f.write_all_at(data, 0),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates `name` (which must not exist) holding `data`.
    pub fn create_new(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let mut f = self.open_file(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)?;
        if let Err(e) = f.write_all(data) {
            drop(f);
            let _ = self.unlink(name);
            return Err(e);
        }
        Ok(())
    }

    /// Hard-links `from` to `to` in this directory; fails with `EEXIST` if `to` exists. This
    /// is the store's atomic reservation.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid dirfds and C strings; flags 0 means do not follow `from`.
        check(unsafe { libc::linkat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes the file `name` (a symlink itself, never its target).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// `lstat` of `name`; `None` when it does not exist.
    pub fn stat_at(&self, name: &str) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dirfd, C string and out-pointer.
        match check(unsafe { libc::fstatat(self.raw(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) => Ok(Some(Stat::from(&st))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `fstat` of the directory itself.
    pub fn stat(&self) -> io::Result<Stat> {
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out-pointer.
        check(unsafe { libc::fstat(self.raw(), &mut st) })?;
        Ok(Stat::from(&st))
    }

    /// Sets the directory's modification time (the access time is left alone).
    pub fn set_mtime(&self, sec: i64, nsec: i64) -> io::Result<()> {
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: sec as libc::time_t,
                tv_nsec: nsec as _,
            },
        ];
        // SAFETY: valid fd and a two-element timespec array.
        check(unsafe { libc::futimens(self.raw(), times.as_ptr()) }).map(|_| ())
    }

    /// The names in the directory (without `.` and `..`), in no particular order.
    pub fn names(&self) -> io::Result<Vec<String>> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new fd that fdopendir takes over.
        let fd = check(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: fd is a valid directory fd; on success the DIR owns it.
        let dir = unsafe { libc::fdopendir(fd) };
        if dir.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so fd is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        // The duplicate shares the file offset with our fd: start from the beginning.
        // SAFETY: dir is a valid DIR*.
        unsafe { libc::rewinddir(dir) };
        let mut out = Vec::new();
        let result = loop {
            // SAFETY: errno is thread-local; reset it to tell the end from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: dir is a valid DIR*.
            let ent = unsafe { libc::readdir(dir) };
            if ent.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error().unwrap_or(0) == 0 {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: d_name of a returned dirent is a NUL-terminated string.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // Names that are not UTF-8 are no lease, hint or file of ours.
            if let Ok(s) = std::str::from_utf8(bytes) {
                out.push(s.to_string());
            }
        };
        // SAFETY: dir is a valid DIR*, closed once (this closes fd too).
        unsafe { libc::closedir(dir) };
        result.map(|_| out)
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_regular_files_are_refused_at_once() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        let fifo = std::ffi::CString::new(t.path().join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::create_dir(t.path().join("dir")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(t.path().join("sock")).unwrap();
        for (name, kind) in [("fifo", "a FIFO"), ("dir", "a directory"), ("sock", "a socket")] {
            for flags in [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDONLY | libc::O_CREAT] {
                let e = d.open_file(name, flags, 0o644).unwrap_err();
                assert!(
                    is_not_regular(&e) || e.raw_os_error() == Some(libc::ENXIO),
                    "{name}: {e}"
                );
                if is_not_regular(&e) {
                    assert_eq!(e.to_string(), format!("{kind}, not a regular file"));
                }
            }
            let e = d.read_small(name, 10).unwrap_err();
            assert!(is_not_regular(&e), "{name}: {e}");
            let e = d.write_atomic(name, ".tmp-x", b"x", 0o644).unwrap_err();
            assert!(is_not_regular(&e), "{name}: {e}");
            assert!(d.stat_at(".tmp-x").unwrap().is_none());
        }
        let e = d.open_file("/dev/null", libc::O_RDONLY, 0).unwrap_err();
        assert!(is_not_regular(&e), "{e}");
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        d.write_atomic("f", ".tmp-1", b"one", 0o644).unwrap();
        d.write_atomic("f", ".tmp-1", b"two!", 0o644).unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"two!");
        std::fs::write(t.path().join("target"), "keep").unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), t.path().join("l")).unwrap();
        d.write_atomic("l", ".tmp-1", b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(t.path().join("target")).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(t.path().join("l")).unwrap().is_file());
        let mut names = d.names().unwrap();
        names.sort();
        assert_eq!(names, ["f", "l", "target"]);
    }
}

//! The one module that calls `setns`. Namespaces are entered only on short-lived threads made
//! for that purpose (never on a thread that runs async tasks): to open a netlink socket there,
//! or to write the namespace's `/proc/sys/net` sysctls, which follow the calling thread.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use crate::error::{Error, Result};

const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)

/// An open network namespace (a file such as /run/netns/x or /proc/PID/ns/net).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace. A missing file is code 3
    /// (the container does not exist); a file that is not a netns is code 4.
    pub fn open(path: &str) -> Result<Netns> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::UnknownContainer(format!("network namespace CNI_NETNS \"{path}\" does not exist"))
            } else {
                Error::InvalidEnv(format!("cannot open CNI_NETNS \"{path}\": {e}"))
            }
        })?;
        // SAFETY: ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if t != libc::CLONE_NEWNET {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS \"{path}\" is not a network namespace"
            )));
        }
        Ok(Netns {
            file,
            path: path.to_string(),
        })
    }

    /// The namespace of this process.
    pub fn current() -> Result<Netns> {
        let file =
            File::open("/proc/thread-self/ns/net").map_err(|e| Error::io("opening /proc/thread-self/ns/net", e))?;
        Ok(Netns {
            file,
            path: "/proc/thread-self/ns/net".into(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// (device, inode) of the namespace: equal for the same namespace.
    pub fn id(&self) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        Ok((m.dev(), m.ino()))
    }

    /// Runs `f` on a new thread that has entered this namespace; the thread ends with `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid netns fd affects only this thread, which ends here.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io(
                        format!("entering network namespace {}", self.path),
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Internal("thread in network namespace panicked".into()))?
        })
    }
}

/// Writes `value` to `/proc/sys/<key>` (key like `net/ipv4/conf/eth0/arp_notify`) in the
/// calling thread's namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    if key.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(Error::Internal(format!("invalid sysctl key {key}")));
    }
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|e| Error::io(format!("writing {value} to {path}"), e))
}

/// Reads `/proc/sys/<key>` in the calling thread's namespace.
pub fn read_sysctl(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("reading {path}"), e))
}

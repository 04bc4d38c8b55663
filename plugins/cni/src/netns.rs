//! The one module that calls `setns`. Namespaces are entered only on short-lived threads made
//! for that purpose (never on a thread that runs async tasks): to open a netlink socket there,
//! or to write the namespace's `/proc/sys/net` sysctls, which follow the calling thread.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use crate::error::{Error, Result};

const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)
/// `statfs.f_type` of the namespace filesystem (nsfs).
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// An open network namespace (a file such as /run/netns/x or /proc/PID/ns/net).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

/// What a file is, for messages (from its `st_mode`): "a FIFO", "a socket", ...
pub fn file_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        _ => "a regular file",
    }
}

/// The name of a namespace type of `NS_GET_NSTYPE`.
fn ns_kind(t: libc::c_int) -> &'static str {
    match t {
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        0x80 => "a time namespace",
        _ => "a namespace of another type",
    }
}

fn cstring(path: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(path).map_err(|_| Error::invalid_env("invalid CNI_NETNS: contains NUL"))
}

/// Whether `CNI_NETNS_OVERRIDE` allows the plugin's own namespace as the container's (`1` or
/// `true` in any case, as the upstream library).
pub fn netns_override() -> bool {
    std::env::var("CNI_NETNS_OVERRIDE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

impl Netns {
    /// Opens `path` and checks that it is a network namespace, without ever blocking or
    /// opening anything else: the path is resolved once with `O_PATH` (which opens no FIFO,
    /// device or socket), the object found must be a namespace file (nsfs), and only that
    /// very object is then opened for use, through its descriptor, and asked its type.
    /// A missing file is code 3 (the container does not exist); anything that is not a
    /// network namespace is code 4.
    pub fn open(path: &str) -> Result<Netns> {
        let not_netns = |what: &str| {
            Error::invalid_env(format!(
                "CNI_NETNS \"{}\" is {what}, not a network namespace",
                path.escape_debug()
            ))
        };
        let c = cstring(path)?;
        // SAFETY: a valid C string; O_PATH opens nothing but a reference to the object.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) => Error::unknown_container(format!(
                    "network namespace CNI_NETNS \"{}\" does not exist",
                    path.escape_debug()
                )),
                Some(libc::ENOTDIR) => not_netns("a path through a non-directory"),
                _ => Error::invalid_env(format!("cannot open CNI_NETNS \"{}\": {e}", path.escape_debug())),
            });
        }
        // SAFETY: fd is a new descriptor we own.
        let opath = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: zeroed structs are valid out-parameters; fd is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(opath.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::io(
                format!("CNI_NETNS \"{}\"", path.escape_debug()),
                std::io::Error::last_os_error(),
            ));
        }
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstatfs(opath.as_raw_fd(), &mut sfs) } != 0 {
            return Err(Error::io(
                format!("CNI_NETNS \"{}\"", path.escape_debug()),
                std::io::Error::last_os_error(),
            ));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || sfs.f_type as libc::c_long != NSFS_MAGIC {
            return Err(not_netns(file_kind(st.st_mode)));
        }
        // The namespace file itself, reopened through the descriptor (not the path again).
        let proc_path = cstring(&format!("/proc/self/fd/{}", opath.as_raw_fd()))?;
        // SAFETY: a valid C string; the object is a namespace file, which does not block.
        let fd = unsafe { libc::open(proc_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(Error::io(
                format!("opening CNI_NETNS \"{}\"", path.escape_debug()),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a new descriptor we own.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: ioctl on an fd we own; NS_GET_NSTYPE takes no argument.
        let t = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if t != libc::CLONE_NEWNET {
            return Err(not_netns(if t < 0 {
                "a namespace file of unknown type"
            } else {
                ns_kind(t)
            }));
        }
        Ok(Netns {
            file,
            path: path.to_string(),
        })
    }

    /// Opens the container's namespace `path` of a call: [`Netns::open`], refusing the
    /// plugin's own network namespace (code 8: a "container" interface made there would be
    /// made on the host, and a DEL would delete the host's interface of that name) unless
    /// `CNI_NETNS_OVERRIDE` allows it.
    pub fn open_container(path: &str) -> Result<Netns> {
        let ns = Netns::open(path)?;
        if !netns_override() && ns.id()? == Netns::current()?.id()? {
            return Err(Error::invalid_netns(format!(
                "plugin's netns and netns from CNI_NETNS should not be the same: \"{}\" is the \
                 plugin's own network namespace, and container interfaces are never made or \
                 removed there (set CNI_NETNS_OVERRIDE=1 to allow it)",
                path.escape_debug()
            )));
        }
        Ok(ns)
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

    /// Starts `f` on a new thread that enters this namespace (through its own duplicate of the
    /// namespace's descriptor) and ends with `f`; the caller goes on meanwhile and joins it.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let file = self.file.try_clone().map_err(|e| Error::io(&self.path, e))?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .spawn(move || {
                // SAFETY: setns on a valid netns fd affects only this thread, which ends here.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io(
                        format!("entering network namespace {path}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                drop(file);
                Ok(f())
            })
            .map_err(|e| Error::io(format!("starting a thread for network namespace {}", self.path), e))
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
            .map_err(|_| Error::internal("thread in network namespace panicked"))?
        })
    }
}

/// Writes `value` to `/proc/sys/<key>` (key like `net/ipv4/conf/eth0/arp_notify`) in the
/// calling thread's namespace.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    if key.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(Error::internal(format!("invalid sysctl key {key}")));
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

//! Network namespaces as files, the way `ip netns add` makes them: an empty file with the
//! namespace of a short-lived thread bind-mounted onto it, so that the namespace lives on
//! without any process in it until the file is unmounted.

use std::ffi::CString;
use std::path::Path;

use cni::{Error, Result};

fn cstr(p: &str) -> Result<CString> {
    CString::new(p).map_err(|_| Error::invalid_env(format!("namespace path {p:?} contains NUL")))
}

fn last_err(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

/// Makes `dir` a shared mount point (as `ip netns add` does for /run/netns), so that the
/// namespaces mounted in it are seen from other mount namespaces made later (`ip netns exec`).
fn share_dir(dir: &str) -> Result<()> {
    let d = cstr(dir)?;
    // SAFETY: valid C strings; a propagation change takes no data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself, then share it.
    // SAFETY: as above.
    if unsafe {
        libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(last_err(format!("bind-mounting {dir} onto itself")));
    }
    // SAFETY: as above.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(last_err(format!("making {dir} a shared mount")));
    }
    Ok(())
}

/// Creates a new network namespace at `path` (in directory `dir`, created if missing), with
/// its loopback up. On failure nothing is left.
pub fn create(dir: &str, path: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {dir}"), e))?;
    share_dir(dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(format!("creating the namespace file {path}"), e))?;
    let target = cstr(path)?;
    // A thread of its own: unshare(CLONE_NEWNET) moves only the calling thread, which then
    // ends; the namespace stays, held by the bind mount.
    let made = std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare on this thread, which does nothing else afterwards but the mount.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(last_err("creating a network namespace (unshare)".into()));
        }
        let src = CString::new("/proc/thread-self/ns/net").expect("no NUL");
        // SAFETY: valid C strings; a bind mount takes no data.
        if unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(last_err("bind-mounting the new network namespace".into()));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(Error::internal("the namespace thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(e.context(format!("namespace {path}")));
    }
    if let Err(e) = loopback_up(path) {
        remove(path);
        return Err(e);
    }
    Ok(())
}

/// Sets `lo` up in the namespace at `path` (`ip link set lo up`), through the cni crate's
/// netlink.
fn loopback_up(path: &str) -> Result<()> {
    let ns = cni::netns::Netns::open(path)?;
    let nl = cni::netlink::Nl::open_in(&ns)?;
    let lo = nl
        .link("lo")
        .map_err(|e| Error::netlink(format!("finding lo in {path}: {e}")))?
        .ok_or_else(|| Error::netlink(format!("no lo in {path}")))?;
    let change = cni::netlink::LinkChange {
        up: Some(true),
        ..Default::default()
    };
    nl.set_link(lo.index, &change)
        .map_err(|e| Error::netlink(format!("setting lo up in {path}: {e}")))
}

/// Removes the namespace file `path`: unmounted (lazily) and deleted. Quiet when it is gone.
pub fn remove(path: &str) {
    if path.is_empty() || !Path::new(path).exists() {
        return;
    }
    if let Ok(p) = cstr(path) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(path);
}

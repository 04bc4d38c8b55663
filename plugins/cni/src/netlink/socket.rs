//! The socket of one namespace ([`Nl`]) and the one runtime every socket's requests run on.

use rtnetlink::Handle;

use netlink_packet_route::RouteNetlinkMessage;

use crate::error::Error;
use crate::netns::Netns;

/// A netlink socket in one namespace.
pub struct Nl {
    pub(super) rt: &'static tokio::runtime::Runtime,
    pub(super) h: Handle,
}

type Opened = std::io::Result<(
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    Handle,
    futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
)>;

/// A socket being opened in another namespace ([`Nl::open_in_background`]). Dropped
/// unfinished, its thread is joined.
pub struct NlOpening {
    rt: &'static tokio::runtime::Runtime,
    thread: Option<std::thread::JoinHandle<Result<Opened, Error>>>,
    path: String,
}

impl NlOpening {
    /// The socket, once its thread has opened it.
    pub fn finish(mut self) -> Result<Nl, Error> {
        let thread = self.thread.take().expect("finished once");
        let (conn, h, _) = thread
            .join()
            .map_err(|_| Error::internal("thread in network namespace panicked"))??
            .map_err(|e| Error::io(format!("opening a netlink socket in {}", self.path), e))?;
        self.rt.spawn(conn);
        Ok(Nl { rt: self.rt, h })
    }
}

impl Drop for NlOpening {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process's one current-thread runtime, shared by the sockets of every namespace (built
/// once; never dropped: the process exits after one call).
fn runtime() -> Result<&'static tokio::runtime::Runtime, Error> {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::io("starting the netlink runtime", e))?;
    Ok(RT.get_or_init(|| rt))
}

impl Nl {
    /// A socket in this process's namespace.
    pub fn current() -> Result<Nl, Error> {
        let rt = runtime()?;
        let (conn, h, _) = {
            let _g = rt.enter();
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?
        };
        rt.spawn(conn);
        Ok(Nl { rt, h })
    }

    /// A socket inside `ns`: opened on a short-lived thread that entered `ns` (and the
    /// runtime's context, to register the socket); the requests run on this thread.
    pub fn open_in(ns: &Netns) -> Result<Nl, Error> {
        let rt = runtime()?;
        let handle = rt.handle().clone();
        let (conn, h, _) = ns
            .run(move || {
                let _g = handle.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| Error::io(format!("opening a netlink socket in {}", ns.path()), e))?;
        rt.spawn(conn);
        Ok(Nl { rt, h })
    }

    /// Starts opening a socket inside `ns` ([`Nl::open_in`]) on its own thread and returns at
    /// once: the thread start and the kernel's work overlap with the caller's until
    /// [`NlOpening::finish`].
    pub fn open_in_background(ns: &Netns) -> Result<NlOpening, Error> {
        let rt = runtime()?;
        let handle = rt.handle().clone();
        let thread = ns.spawn(move || {
            let _g = handle.enter();
            rtnetlink::new_connection()
        })?;
        Ok(NlOpening {
            rt,
            thread: Some(thread),
            path: ns.path().to_string(),
        })
    }

    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// Runs `f` on a thread of its own, fresh network namespace (gone with the thread), for the
/// tests of this module.
#[cfg(test)]
pub(super) fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: affects only this thread, which ends with the test.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare needs root");
        f()
    })
    .join()
    .expect("test thread")
}

//! The one module that speaks rtnetlink. It returns our own types ([`Link`], [`IpNet`],
//! [`RouteEntry`]) so that plugins never see netlink messages. One socket per namespace: a
//! [`Nl`] is opened in the current namespace or, through [`Netns::run`], in another one, and all
//! its requests run on one current-thread tokio runtime of this module.
//!
//! By concern, each file one reason to change:
//! - `socket.rs`: the socket of a namespace ([`Nl`], [`NlOpening`]) and the
//!   runtime its requests run on;
//! - `links.rs`: links — what we know of one ([`Link`]), making bridges, veths
//!   and macvlans ([`MacvlanOptions`]), changing them ([`LinkChange`]), bridge ports and their
//!   VLANs, waiting for carrier; MACs;
//! - `routes.rs`: addresses, routes ([`RouteEntry`], [`NewRoute`],
//!   [`MarkedRoute`]) and proxy neighbours.
//!
//! (The `/proc/sys/net` sysctls are not netlink: they live in [`crate::netns`], as they
//! follow the calling thread's namespace.)
//!
//! [`IpNet`]: ipnet::IpNet
//! [`Netns::run`]: crate::netns::Netns::run

use crate::error::{code, Error, Source};

mod links;
mod routes;
mod socket;

pub use links::{format_mac, parse_mac, Link, LinkChange, MacvlanMode, MacvlanOptions};
pub use routes::{MarkedRoute, NewRoute, RouteEntry};
pub use socket::{Nl, NlOpening};

/// A failed netlink request: what was asked, and the kernel's errno if it gave one.
#[derive(Debug)]
pub struct NlError {
    pub op: String,
    pub errno: Option<i32>,
    pub msg: String,
}

impl NlError {
    pub fn is(&self, errno: i32) -> bool {
        self.errno == Some(errno)
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.op, self.msg)
    }
}

impl From<NlError> for Error {
    fn from(e: NlError) -> Error {
        let code = match e.errno {
            Some(libc::EEXIST) | Some(libc::EBUSY) => code::CONFLICT,
            Some(libc::EOPNOTSUPP) => code::NOT_SUPPORTED,
            _ => code::NETLINK,
        };
        let err = Error::new(code, e.to_string());
        match e.errno {
            Some(n) => err.with_source(Source::Errno(n)),
            None => err,
        }
    }
}

pub type NlResult<T> = std::result::Result<T, NlError>;

fn nl_err(op: impl Into<String>, e: rtnetlink::Error) -> NlError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = m.code.map(|c| -c.get());
            let msg = match errno {
                Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
                None => m.to_string(),
            };
            NlError {
                op: op.into(),
                errno,
                msg,
            }
        }
        other => NlError {
            op: op.into(),
            errno: None,
            msg: other.to_string(),
        },
    }
}

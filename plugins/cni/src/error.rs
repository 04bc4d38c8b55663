//! The one error type of the plugin set: a spec error code, a message, the spec's optional
//! `details`, and the cause it came from (an I/O error, a netlink errno, a child's exit). The
//! codes are mapped in one place, [`code`]; context only prefixes the message and keeps the
//! rest.

use serde_json::json;

/// The CNI spec's error codes (1-11, 50/51 for STATUS) and ours (100+).
pub mod code {
    /// The config's `cniVersion` is not one we support, or a verb its version lacks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field this plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// An I/O failure (files, the lease store).
    pub const IO: u32 = 5;
    /// The input could not be decoded (not JSON, wrong types).
    pub const DECODE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// `CNI_NETNS` may not be used (the plugin's own network namespace).
    pub const INVALID_NETNS: u32 = 8;
    /// A transient condition: the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, existing containers may be damaged.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
    /// An internal failure of ours (a bug, such as a panic).
    pub const INTERNAL: u32 = 100;
    /// A netlink request failed.
    pub const NETLINK: u32 = 101;
    /// No address left in a range set.
    pub const NO_ADDRESS: u32 = 102;
    /// A requested or existing resource conflicts (an address held by another container, a
    /// link name taken, an existing link of the wrong type).
    pub const CONFLICT: u32 = 103;
    /// CHECK found the state different from the expected one.
    pub const CHECK_FAILED: u32 = 104;
    /// A firewall (iptables/nftables) command failed.
    pub const FIREWALL: u32 = 105;
    /// The kernel does not support a requested feature.
    pub const NOT_SUPPORTED: u32 = 106;
}

/// What an error came from, kept beside the message.
#[derive(Debug)]
pub enum Source {
    Io(std::io::Error),
    /// The errno of a netlink request.
    Errno(i32),
    /// A delegated plugin's exit, when it said nothing.
    Exit(std::process::ExitStatus),
}

/// Everything that can go wrong in a plugin call.
#[derive(Debug)]
pub struct Error {
    code: u32,
    msg: String,
    details: Option<String>,
    source: Option<Source>,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            Some(Source::Io(e)) => Some(e),
            _ => None,
        }
    }
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(msg: impl Into<String>) -> Error {
                Error::new(code::$code, msg)
            }
        )*
    };
}

impl Error {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Error {
        Error {
            code,
            msg: msg.into(),
            details: None,
            source: None,
        }
    }

    constructors! {
        /// Code 1.
        incompatible_version => INCOMPATIBLE_VERSION,
        /// Code 2.
        unsupported_field => UNSUPPORTED_FIELD,
        /// Code 3.
        unknown_container => UNKNOWN_CONTAINER,
        /// Code 4.
        invalid_env => INVALID_ENV,
        /// Code 5, without a cause (see [`Error::io`] for one).
        io_failure => IO,
        /// Code 6.
        decode => DECODE,
        /// Code 7.
        invalid_config => INVALID_CONFIG,
        /// Code 8.
        invalid_netns => INVALID_NETNS,
        /// Code 11.
        try_again_later => TRY_AGAIN_LATER,
        /// Code 50.
        plugin_not_available => PLUGIN_NOT_AVAILABLE,
        /// Code 51.
        plugin_not_available_limited => PLUGIN_NOT_AVAILABLE_LIMITED,
        /// Code 100.
        internal => INTERNAL,
        /// Code 101.
        netlink => NETLINK,
        /// Code 102.
        no_address => NO_ADDRESS,
        /// Code 103.
        conflict => CONFLICT,
        /// Code 104.
        check_failed => CHECK_FAILED,
        /// Code 105.
        firewall => FIREWALL,
        /// Code 106.
        not_supported => NOT_SUPPORTED,
    }

    /// The error a delegated plugin printed, passed on with its own code, message and details.
    pub fn delegated(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
        let details = details.into();
        Error {
            details: (!details.is_empty()).then_some(details),
            ..Error::new(code, msg)
        }
    }

    /// An I/O error (code 5) with the path or action it concerns, keeping the cause.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::new(code::IO, format!("{what}: {e}")).with_source(Source::Io(e))
    }

    /// The same error with its cause.
    pub fn with_source(mut self, source: Source) -> Error {
        self.source = Some(source);
        self
    }

    /// The spec's error code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// Whether the code is `code`.
    pub fn is(&self, code: u32) -> bool {
        self.code == code
    }

    /// The message (also what `Display` prints).
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// The spec's `details`, if any.
    pub fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }

    /// What the error came from, if known.
    pub fn cause(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// The errno of the cause (an I/O error's or a netlink request's).
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            Some(Source::Io(e)) => e.raw_os_error(),
            Some(Source::Errno(n)) => Some(*n),
            _ => None,
        }
    }

    /// Prefixes the message with some context; the code, the details and the cause stay.
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// Appends to the message; the rest stays.
    fn append(mut self, more: &str) -> Error {
        self.msg.push_str(more);
        self
    }

    /// The spec's error JSON.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if let Some(d) = &self.details {
            v["details"] = json!(d);
        }
        v
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::decode(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collects the errors of a teardown that goes on after each failure.
#[derive(Default, Debug)]
pub struct Errors(Vec<Error>);

impl Errors {
    pub fn new() -> Self {
        Self::default()
    }
    /// Record the error of `r`, if any, and go on.
    pub fn note<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
    /// The first error (its code, details and cause), with every message joined.
    pub fn into_result(self) -> Result<()> {
        let mut it = self.0.into_iter();
        let Some(first) = it.next() else {
            return Ok(());
        };
        let rest: Vec<String> = it.map(|e| e.to_string()).collect();
        if rest.is_empty() {
            Err(first)
        } else {
            Err(first.append(&format!("; {}", rest.join("; "))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_code_details_and_cause() {
        let e = Error::delegated(7, "bad subnet", "from the IPAM plugin").context("ipam");
        assert_eq!(
            (e.code(), e.message(), e.details()),
            (7, "ipam: bad subnet", Some("from the IPAM plugin"))
        );
        assert_eq!(e.to_json("1.1.0")["details"], "from the IPAM plugin");
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Error::io("reading x", io).context("config");
        assert_eq!(e.code(), code::IO);
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_json("1.0.0").get("details").is_none());
    }

    #[test]
    fn errors_keep_the_first_code() {
        let mut errs = Errors::new();
        errs.note::<()>(Err(Error::netlink("a").with_source(Source::Errno(libc::EBUSY))));
        errs.note::<()>(Err(Error::firewall("b")));
        let e = errs.into_result().unwrap_err();
        assert_eq!((e.code(), e.message(), e.errno()), (101, "a; b", Some(libc::EBUSY)));
    }
}

//! The one error type of the plugin set, mapped to the CNI spec's error codes in one place.

use serde_json::json;

/// Everything that can go wrong in a plugin call. `code()` maps each variant to the
/// CNI spec's well-known error codes (1-11, 50/51 for STATUS) or to ours (100+).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Code 1: the config's `cniVersion` is not one we support, or a verb is used with a
    /// version that does not have it.
    #[error("{0}")]
    IncompatibleVersion(String),
    /// Code 2: a field this plugin does not support.
    #[error("{0}")]
    UnsupportedField(String),
    /// Code 3: the container is unknown or does not exist.
    #[error("{0}")]
    UnknownContainer(String),
    /// Code 4: a `CNI_*` environment variable is missing or invalid.
    #[error("{0}")]
    InvalidEnv(String),
    /// Code 5: an I/O failure (files, netlink, commands).
    #[error("{0}")]
    Io(String),
    /// Code 6: the input could not be decoded (not JSON, wrong types).
    #[error("{0}")]
    Decode(String),
    /// Code 7: the network configuration is invalid.
    #[error("{0}")]
    InvalidConfig(String),
    /// Code 8: `CNI_NETNS` may not be used (it is the plugin's own network namespace).
    #[error("{0}")]
    InvalidNetns(String),
    /// Code 11: a transient condition; the runtime should retry later.
    #[error("{0}")]
    TryAgainLater(String),
    /// Code 50: the plugin is not available (STATUS).
    #[error("{0}")]
    PluginNotAvailable(String),
    /// Code 51: the plugin is not available, existing containers may be damaged (STATUS).
    #[error("{0}")]
    PluginNotAvailableLimited(String),
    /// Code 100: an internal failure of ours (a bug, such as a panic).
    #[error("{0}")]
    Internal(String),
    /// Code 101: a netlink request failed.
    #[error("{0}")]
    Netlink(String),
    /// Code 102: no address left in a range set.
    #[error("{0}")]
    NoAddress(String),
    /// Code 103: a requested or existing resource conflicts (address held by another container,
    /// link name taken, an existing link of the wrong type).
    #[error("{0}")]
    Conflict(String),
    /// Code 104: a check of CHECK found the state different from the expected.
    #[error("{0}")]
    CheckFailed(String),
    /// Code 105: a firewall (iptables/nftables) command failed.
    #[error("{0}")]
    Firewall(String),
    /// Code 106: the kernel does not support a requested feature.
    #[error("{0}")]
    NotSupported(String),
    /// An error returned by a delegated plugin (IPAM), passed on with its own code.
    #[error("{msg}")]
    Delegated { code: u32, msg: String, details: String },
}

impl Error {
    /// The spec's error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) => 1,
            Error::UnsupportedField(_) => 2,
            Error::UnknownContainer(_) => 3,
            Error::InvalidEnv(_) => 4,
            Error::Io(_) => 5,
            Error::Decode(_) => 6,
            Error::InvalidConfig(_) => 7,
            Error::InvalidNetns(_) => 8,
            Error::TryAgainLater(_) => 11,
            Error::PluginNotAvailable(_) => 50,
            Error::PluginNotAvailableLimited(_) => 51,
            Error::Internal(_) => 100,
            Error::Netlink(_) => 101,
            Error::NoAddress(_) => 102,
            Error::Conflict(_) => 103,
            Error::CheckFailed(_) => 104,
            Error::Firewall(_) => 105,
            Error::NotSupported(_) => 106,
            Error::Delegated { code, .. } => *code,
        }
    }

    fn details(&self) -> &str {
        match self {
            Error::Delegated { details, .. } => details,
            _ => "",
        }
    }

    /// Prefix the message with some context, keeping the code.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        self.reword(|m| format!("{what}: {m}"))
    }

    /// The spec's error JSON.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
        });
        if !self.details().is_empty() {
            v["details"] = json!(self.details());
        }
        v
    }

    /// An I/O error with the path or action it concerns.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::Io(format!("{what}: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Decode(e.to_string())
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
    /// The first error's code, with every message joined.
    pub fn into_result(self) -> Result<()> {
        let mut it = self.0.into_iter();
        let Some(first) = it.next() else {
            return Ok(());
        };
        let rest: Vec<String> = it.map(|e| e.to_string()).collect();
        if rest.is_empty() {
            Err(first)
        } else {
            Err(first.reword(|m| format!("{m}; {}", rest.join("; "))))
        }
    }
}

impl Error {
    fn reword(self, f: impl FnOnce(String) -> String) -> Error {
        let code = self.code();
        let details = self.details().to_string();
        let msg = f(self.to_string());
        match code {
            1 => Error::IncompatibleVersion(msg),
            2 => Error::UnsupportedField(msg),
            3 => Error::UnknownContainer(msg),
            4 => Error::InvalidEnv(msg),
            5 => Error::Io(msg),
            6 => Error::Decode(msg),
            7 => Error::InvalidConfig(msg),
            8 => Error::InvalidNetns(msg),
            11 => Error::TryAgainLater(msg),
            50 => Error::PluginNotAvailable(msg),
            51 => Error::PluginNotAvailableLimited(msg),
            101 => Error::Netlink(msg),
            102 => Error::NoAddress(msg),
            103 => Error::Conflict(msg),
            104 => Error::CheckFailed(msg),
            105 => Error::Firewall(msg),
            106 => Error::NotSupported(msg),
            100 => Error::Internal(msg),
            code => Error::Delegated { code, msg, details },
        }
    }
}

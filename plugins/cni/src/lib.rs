//! The CNI protocol library every plugin of this set is made of.
//!
//! - [`skel`]: the entry point (environment, config, dispatch, result/error printing)
//! - [`types`], [`version`], [`env`], [`error`]: the spec's data
//! - [`delegate`]: running the IPAM plugin
//! - [`txn`]: an ADD as a transaction whose undo runs on every way out; [`fault`]: test-only
//!   fault points
//! - [`netns`]: the only module that calls `setns`
//! - [`netlink`]: the only module that speaks rtnetlink
//! - [`sysctl`]: `/proc/sys/net` writes inside a namespace
//! - [`firewall`]: masquerade rules (iptables or nftables)

pub mod delegate;
pub mod env;
pub mod error;
pub mod fault;
pub mod firewall;
pub mod gojson;
pub mod iface;
pub mod netlink;
pub mod netns;
pub mod skel;
pub mod spoofchk;
pub mod trace;
pub mod txn;
pub mod types;
pub mod version;

pub use error::{Error, Errors, Result};
pub use skel::{Call, Plugin};
pub use types::{CniResult, Dns, Interface, IpConfig, NetConf, Route};

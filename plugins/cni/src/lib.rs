//! The CNI protocol library every plugin of this set is made of. Its layers point one way,
//! `env` ← `skel` ← `delegate` ← `iface` (`scripts/module-graph.py` checks that no module
//! imports one that imports it back).
//!
//! - [`skel`]: the entry point (environment, config, dispatch, result/error printing)
//! - [`env`](mod@env): a call's variables, the rules of names, the process flags (read once)
//! - [`types`], [`version`], [`error`]: the spec's data
//! - [`gojson`]: configs decoded as the reference's Go decoder decodes them (key matching)
//! - [`delegate`]: running the IPAM plugin
//! - [`txn`]: an ADD as a transaction whose undo runs on every way out; [`fault`]: test-only
//!   fault points
//! - [`netns`]: the only module that calls `setns` (and the `/proc/sys/net` sysctls, which
//!   follow the calling thread's namespace)
//! - [`netlink`]: the only module that speaks rtnetlink (a folder: the socket, links, routes)
//! - [`iface`]: the steps bridge and macvlan share (the IPAM choreography of an ADD, DEL,
//!   CHECK, GC, the container interface)
//! - [`ids`]: stable hashes of names, random call tokens; [`lockfile`]: `flock` with a deadline
//! - [`firewall`]: masquerade rules (iptables or nftables)
//! - [`spoofchk`]: the `macspoofchk` rules (nftables)
//! - [`teardown`]: what DEL and GC read of a config (only what they need, leniently)
//! - [`trace`]: step timings on stderr (`CNI_RS_TRACE=1`)
//! - [`log`](mod@log): the one way to write to stderr ([`log!`]), which never fails a call

pub mod delegate;
pub mod env;
pub mod error;
pub mod fault;
pub mod firewall;
pub mod gojson;
pub mod ids;
pub mod iface;
pub mod lockfile;
pub mod log;
pub mod netlink;
pub mod netns;
pub mod skel;
pub mod teardown;
pub use firewall::spoofchk;
pub mod trace;
pub mod txn;
pub mod types;
pub mod version;

pub use error::{Error, Errors, Result};
pub use skel::{Call, Plugin};
pub use types::{CniResult, Dns, Interface, IpConfig, NetConf, Route};

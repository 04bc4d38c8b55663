//! `host-local-etcd`: host-local with the etcd lease store linked in, and the operator
//! commands. A host-local without the etcd client (the multicall program every bridge, macvlan
//! and host-local call starts) hands a call whose config selects `ipam.store` `"etcd"` over to
//! this program, and its operator commands too (see `host_local::etcd`).
//!
//! - [`conn`]: the connection of a call, its deadline and the typed outcome of each attempt
//! - [`store`]: the etcd store, an implementation of `host_local::store::Store`
//! - [`ops`]: `host-local leases|release-host|import`, on either store

pub mod conn;
pub mod layout;
pub mod ops;
pub mod store;
pub mod v2;

use cni::{Error, Result};
use host_local::etcd::EtcdConfig;
use host_local::store::Store;

use conn::Conn;
use v2::Layout;

/// Links the etcd store into host-local's verbs (see `host_local::etcd::register`).
pub fn register() {
    host_local::etcd::register(open);
}

/// Opens the etcd store of `network`, in the layout its keys follow: this version's, or
/// today's ([`store`]) until `host-local migrate` moves it. `att`: the container the call is
/// about, whose attachment index the first read fetches.
pub fn open(conf: &EtcdConfig, network: &str, att: Option<&str>) -> Result<Box<dyn Store>> {
    let conn = Conn::open(conf)?;
    cni::trace::step("etcd connect");
    match v2::EtcdStore::open(conn, network, att)? {
        Ok(s) => Ok(Box::new(s)),
        Err((conn, Layout::Old)) => Ok(Box::new(store::EtcdStore::open_with(conn, network)?)),
        Err((_, layout)) => Err(layout_error(network, layout)),
    }
}

/// The error of a call on a network whose keys this version cannot use now.
pub fn layout_error(network: &str, layout: Layout) -> Error {
    match layout {
        Layout::Unknown => Error::io_failure(format!(
            "etcd: network {network}: its layout marker names a key layout this version does not know (a later version's?)"
        )),
        _ => Error::try_again_later(format!(
            "etcd: network {network} is being migrated to the key layout of this version (host-local migrate); try again"
        )),
    }
}

/// The program: the operator commands when run with arguments and without `CNI_COMMAND`,
/// else host-local, with both stores.
pub fn main() -> ! {
    register();
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        std::process::exit(ops::main(std::env::args().skip(1).collect()))
    }
    cni::skel::run("host-local", &host_local::HostLocal)
}

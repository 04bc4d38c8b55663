//! `host-local-etcd`: host-local with the etcd lease store linked in, and the operator
//! commands. A host-local without the etcd client (the multicall program every bridge, macvlan
//! and host-local call starts) hands a call whose config selects `ipam.store` `"etcd"` over to
//! this program, and its operator commands too (see `host_local::etcd`).
//!
//! - [`conn`]: the connection of a call, its deadline and the typed outcome of each attempt
//! - [`store`]: the etcd store, an implementation of `host_local::store::Store`
//! - [`ops`]: `host-local leases|release-host|import`, on either store

pub mod conn;
pub mod ops;
pub mod store;

/// Links the etcd store into host-local's verbs (see `host_local::etcd::register`).
pub fn register() {
    host_local::etcd::register(|conf, network| Ok(Box::new(store::EtcdStore::open(conf, network)?)));
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

//! `host-local-etcd`: host-local with the etcd lease store linked in, and the operator
//! commands. A host-local without the etcd client (the multicall program every bridge, macvlan
//! and host-local call starts) hands a call whose config selects `ipam.store` `"etcd"` over to
//! this program, and its operator commands too (see `host_local::etcd`).
//!
//! - [`conn`]: the connection of a call, its deadline and the typed outcome of each attempt
//! - [`layout`]: the keys and the lease value
//! - [`v2`]: the store in the address-sorted layout below, an implementation of
//!   `host_local::store::Store`
//! - [`store`]: the store in the layout of the earlier versions (`ips/<address>`), which
//!   serves a network until `host-local migrate` moves it
//! - [`ops`]: `host-local leases|release-host|import|migrate`
//!
//! # The layout
//!
//! ```text
//! <prefix>/<network>/ip4/<8 hex digits>         a lease: {"ip":"10.1.0.5","containerId":"c1","ifname":"eth0",
//! <prefix>/<network>/ip6/<32 hex digits>                  "host":"node-a","token":"…","claim":"…","time":…}
//! <prefix>/<network>/att/<id>/<ifname>/ip4/<hex>  the attachment index: the lease's value again
//! <prefix>/<network>/host/<host>/ip4/<hex>        the host index: the lease's value again
//! <prefix>/<network>/last/<n>                   the address last reserved in range set n (shared round robin)
//! <prefix>/<network>/boot/<host>                the host's kernel boot id at its last call
//! <prefix>/<network>/layout                     "2": this layout ("migrating" while host-local migrate runs)
//! ```
//!
//! - **Sorted by address.** A lease key is the address in fixed-width hex, one prefix per
//!   family, so keys sort as addresses do and a range of addresses is a range of keys; the
//!   readable address is in the value. (The earlier `ips/<address>` keys sorted `10.0.0.10`
//!   before `10.0.0.2`.) An old-format lease (a container id only, imported from the
//!   reference's disk store) has an empty ifname segment in its attachment key.
//! - **Indexes in the same transactions.** A lease, its attachment-index entry and its
//!   host-index entry are put and deleted together in one transaction, always: they carry the
//!   same value and the same `mod_revision`, and a killed call can never leave one without the
//!   others. DEL and CHECK read the attachment's entries (a prefix of a few keys); GC, a reboot
//!   and `release-host` read one host's entries.
//!
//! # A call
//!
//! **One read, one transaction, no lock.** The first read (one request) fetches the marker,
//! the container's attachment-index entries, the pointers and this host's boot record; it is
//! served by the member from its own state (serializable), since the transaction checks
//! every decision made from it (a call that writes nothing, such as CHECK, checks the
//! attachment's entries with a read-only transaction through the cluster). ADD
//! then reserves the address after the pointer *on speculation*: the transaction creates it
//! under `create_revision == 0`; when the address is held (or another call took it first),
//! nothing is written and the transaction's other branch has read the window of lease keys
//! from that address on (a limited, keys-only range read of at most 64 keys, bounded in the
//! address space too), so the next round picks from what is there. Each round's losers skip a
//! small random number of free candidates, so that they spread out. A window that comes back
//! full is followed by larger plain reads (up to 4,096 keys): a range set found full after one
//! pass over its windows is code 102. Static requests (`ips`, `IP=`) are keyed: the compare on
//! their key, the holder's lease read by key for the message. Nothing in a call reads every
//! lease of the network.
//!
//! Every write compares the marker (the layout), the container's attachment-index entries (no
//! entry of it changed since it was read: two ADDs of one attachment at once never both
//! reserve; the second finds the first one's lease in its next round), each new lease
//! `create_revision == 0`, each release and claim `mod_revision == <read>`, the boot record.
//! GC and a reboot's release are sweeps: batches of sub-transactions, one per lease under its
//! own compare, before the call's own transaction.
//!
//! **Unknown outcomes.** A call's token (`CNI_RS_ADD_TOKEN`, else its own) is in every lease it
//! creates. When a write's reply is lost, the call reads the keys back: its token there means
//! the write committed. The undo of a failed ADD (`CNI_RS_UNDO_FAILED_ADD=<token>`) releases a
//! lease only if that call created it (`token`) and no later call claimed it (`claim`, which
//! every ADD of the attachment sets on the leases it finds).
//!
//! **etcd trouble** is typed ([`conn`]): retried on the next member until the deadline (code
//! 11), or a definite refusal (code 5 at once).
//!
//! # Migration
//!
//! A network whose keys are in the earlier layout (leases under `ips/`, no marker) keeps being
//! served by that layout's code ([`store`]), so hosts can be upgraded one by one. When every
//! host runs this version, `host-local migrate CONFIG` moves it: it sets the marker to
//! `migrating` (from then on every call on the network is code 11, try again, and a call of the
//! earlier layout's code that was under way fails its compare on the marker), moves the leases
//! a batch at a time (each lease with its two index entries in one sub-transaction that also
//! deletes the old key, under compares: the old lease unchanged, the new key free), and sets
//! the marker to `2` when none is left. The pointers and boot records keep their keys. It can
//! be interrupted and run again: it resumes. A host still running an earlier version after the
//! migration would see an empty network: upgrade every host first.

/// Seconds since the epoch (0 before it), the time a lease records.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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

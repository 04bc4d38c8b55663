//! `host-local-etcd`: see the library.

fn main() {
    host_local_etcd::main()
}

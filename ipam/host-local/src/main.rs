//! The `host-local` binary: see the library for everything.

fn main() {
    cni::skel::run("host-local", &host_local::HostLocal)
}

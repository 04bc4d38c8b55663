//! The `host-local` binary: see the library for everything. Run with arguments and without
//! `CNI_COMMAND`, it is the operators' tool ([`host_local::ops`]).

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        std::process::exit(host_local::ops::main(std::env::args().skip(1).collect()));
    }
    cni::skel::run("host-local", &host_local::HostLocal)
}

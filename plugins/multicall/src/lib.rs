//! The plugin set as one multicall program: it is the plugin named by the file name it is run
//! under (the basename of `argv[0]`), or, under any other name, the one it was built as.
//! `make install` installs one file under the three names (hard links): a bridge or macvlan
//! ADD then runs its host-local IPAM in this process, on a thread, when `CNI_PATH` resolves
//! `host-local` to that same file (see [`cni::delegate::register_builtin`]), and executes
//! whatever else it resolves to (a reference or third-party IPAM plugin, a copy) as always.

/// The plugins of the set, by the name they are installed under.
pub const NAMES: [&str; 3] = ["bridge", "macvlan", "host-local"];

/// The plugin `argv[0]` names, else `built_as`.
pub fn plugin_name(argv0: Option<&std::ffi::OsStr>, built_as: &'static str) -> &'static str {
    let base = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|b| b.to_str());
    NAMES.iter().copied().find(|n| Some(*n) == base).unwrap_or(built_as)
}

/// Runs the plugin this process is (see [`plugin_name`]) and exits.
pub fn main(built_as: &'static str) -> ! {
    let argv0 = std::env::args_os().next();
    match plugin_name(argv0.as_deref(), built_as) {
        "bridge" => {
            cni::delegate::register_builtin("host-local", &host_local::HostLocal);
            cni::skel::run("bridge", &bridge::Bridge)
        }
        "macvlan" => {
            cni::delegate::register_builtin("host-local", &host_local::HostLocal);
            cni::skel::run("macvlan", &macvlan::Macvlan)
        }
        // With arguments and without `CNI_COMMAND`: the operators' tool, which is in
        // host-local-etcd with the etcd client ([`host_local::etcd::exec_ops`]).
        _ if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 => {
            std::process::exit(host_local::etcd::exec_ops())
        }
        _ => cni::skel::run("host-local", &host_local::HostLocal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_name_it_runs_under_chooses() {
        assert_eq!(
            plugin_name(Some(OsStr::new("/opt/cni/bin/host-local")), "bridge"),
            "host-local"
        );
        assert_eq!(plugin_name(Some(OsStr::new("macvlan")), "bridge"), "macvlan");
        assert_eq!(plugin_name(Some(OsStr::new("./bridge")), "host-local"), "bridge");
        // Any other name: what it was built as.
        assert_eq!(plugin_name(Some(OsStr::new("/tmp/cni-bridge")), "bridge"), "bridge");
        assert_eq!(plugin_name(Some(OsStr::new("/x/host-local.old")), "macvlan"), "macvlan");
        assert_eq!(plugin_name(None, "host-local"), "host-local");
        assert_eq!(plugin_name(Some(OsStr::new("")), "macvlan"), "macvlan");
    }
}

//! The `macvlan` CNI plugin binary: parse and dispatch; the steps live in `plugin.rs`.

mod config;
mod plugin;
mod shim;

fn main() {
    cni::skel::run("macvlan", &plugin::Macvlan)
}

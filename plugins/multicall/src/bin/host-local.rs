//! `host-local`: the multicall program built under this name (see the library).

fn main() {
    multicall::main("host-local")
}

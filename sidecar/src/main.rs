//! `kshuffle-sidecar`: the admission webhook and the sidecar's serve mode (work in progress).

fn main() {}

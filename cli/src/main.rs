//! berth: the admin CLI (its own issue; Debian's ctr serves until then).
#![forbid(unsafe_code)]
fn main() {
    eprintln!(
        "berth: the admin CLI is not implemented yet; use ctr --address /run/berth/berth.sock"
    );
    std::process::exit(1);
}

//! berth-shim: one process per container; subreaper, stdio owner, event journal.
fn main() {
    eprintln!("berth-shim: not implemented yet");
    std::process::exit(1);
}

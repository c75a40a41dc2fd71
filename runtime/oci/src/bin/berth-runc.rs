//! berth-runc: runc's command line over the berth-oci library.
fn main() {
    eprintln!("berth-runc: not implemented yet");
    std::process::exit(1);
}

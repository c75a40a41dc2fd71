//! berthd entry point.
fn main() {
    eprintln!("berthd: not implemented yet");
    std::process::exit(1);
}

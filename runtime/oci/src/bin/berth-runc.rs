//! berth-runc: runc's command line over the berth-oci library. Thin: parse,
//! seal (for verbs that enter a container), dispatch, map errors to exit code 1.

use berth_oci::{cli::Cli, commands, logging, sealed};
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log.clone(), cli.log_format, cli.debug);
    if commands::enters_container(&cli.command) {
        // Run from a sealed copy (CVE-2019-5736) and stay non-dumpable until exec.
        if let Err(e) = sealed::ensure_sealed() {
            logging::error(&e.to_string());
            std::process::exit(1);
        }
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if let Err(e) = berth_oci::process::become_subreaper() {
            logging::error(&e.to_string());
            std::process::exit(1);
        }
    }
    logging::debug("start");
    match commands::dispatch(&cli) {
        Ok(code) => {
            logging::debug("done");
            std::process::exit(code)
        }
        Err(e) => {
            logging::error(&e.to_string());
            std::process::exit(1);
        }
    }
}

//! berth: the admin CLI of Berth, a thin gRPC client of berthd in the style of containerd's
//! `ctr` (same nouns and verbs, same containerd API v1 on the wire), friendlier: a secure
//! default spec for `run`, a real terminal for `-t`, tables or JSON, one-line errors.
//!
//! Start-up cost matters (it is paid by every `berth run`): one current-thread tokio runtime,
//! no eager work before the command is known. This binary must never print a backtrace: every
//! failure is one `berth: ...` line and a non-zero exit code.
#![deny(unsafe_code)]

mod cli;
mod client;
mod commands;
mod error;
mod events_json;
mod image;
mod mount;
mod output;
mod progress;
mod refs;
mod spec;
mod stdio;
mod transfer;
mod tty;

use clap::Parser;

fn main() {
    tty::install_panic_hook();
    let cli = cli::Cli::parse();
    let code = match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            tty::restore_terminal();
            eprintln!("berth: {e}");
            e.exit_code()
        }
    };
    tty::restore_terminal();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // exit() skips the runtime's shutdown, which would wait for a blocked stdin reader.
    std::process::exit(code);
}

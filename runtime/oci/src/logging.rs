//! Log lines for `--log`/`--log-format` (runc's text and JSON shapes; containerd's
//! shim parses the JSON ones) plus the `berth-runc: <message>` line on stderr.
//! Synchronous writes only: this must never start a logging thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::cli::LogFormat;

struct Config {
    path: Option<PathBuf>,
    format: LogFormat,
    debug: bool,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// Configure logging from the global flags.
pub fn init(path: Option<PathBuf>, format: LogFormat, debug: bool) {
    if let Ok(mut c) = CONFIG.lock() {
        *c = Some(Config {
            path,
            format,
            debug,
        });
    }
}

fn line(format: LogFormat, level: &str, msg: &str) -> String {
    let time = crate::utils::now_rfc3339();
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({"level": level, "msg": msg, "time": time});
            format!("{v}\n")
        }
        LogFormat::Text => format!("time={time:?} level={level} msg={msg:?}\n"),
    }
}

fn write(level: &str, msg: &str) {
    let Ok(c) = CONFIG.lock() else { return };
    let Some(c) = c.as_ref() else { return };
    if level == "debug" && !c.debug {
        return;
    }
    let l = line(c.format, level, msg);
    match &c.path {
        Some(p) => {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = f.write_all(l.as_bytes());
            }
        }
        None if level == "debug" => {
            let _ = std::io::stderr().write_all(l.as_bytes());
        }
        None => {}
    }
}

/// Log a fatal error: to the log file in the chosen format, and always to stderr
/// as `berth-runc: <message>`.
pub fn error(msg: &str) {
    write("error", msg);
    let _ = writeln!(std::io::stderr(), "berth-runc: {msg}");
}

/// Log a warning (log file only, or stderr when there is none).
pub fn warn(msg: &str) {
    write("warning", msg);
}

/// Log a debug line when `--debug` is set.
pub fn debug(msg: &str) {
    write("debug", msg);
}

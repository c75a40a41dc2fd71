//! Running host commands from tests with a time limit.
//!
//! Never waits for EOF on a command's pipes after it exited: processes it leaves behind (the
//! init of `runc create`) keep them open.

/// Run `cmd` to completion with stdin from /dev/null, capturing stdout and stderr; SIGKILL it
/// and panic (with what it printed) when it takes longer than `timeout`.
///
/// Output is collected until the command exits plus a short grace period, not until EOF: a
/// process it leaves behind (e.g. the init of `runc create`) may hold the pipes open forever.
#[track_caller]
pub fn run_timeout(
    cmd: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::process::Output {
    run_timeout_with_stdin(cmd, std::process::Stdio::null(), timeout)
}

/// [`run_timeout`] with the given stdin (e.g. a file holding what a user would type).
#[track_caller]
pub fn run_timeout_with_stdin(
    cmd: &mut std::process::Command,
    stdin: std::process::Stdio,
    timeout: std::time::Duration,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    type Sink = Arc<Mutex<(Vec<u8>, bool)>>;
    let reader = |pipe: Option<Box<dyn Read + Send>>| -> Sink {
        let sink: Sink = Arc::default();
        let s = sink.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            if let Some(mut p) = pipe {
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    s.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                        .extend_from_slice(&buf[..n]);
                }
            }
            s.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        });
        sink
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let take = |sink: &Sink, grace: Duration| {
        let deadline = Instant::now() + grace;
        loop {
            let g = sink.lock().unwrap_or_else(|e| e.into_inner());
            if g.1 || Instant::now() >= deadline {
                return g.0.clone();
            }
            drop(g);
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&take(&out, Duration::ZERO)),
                    String::from_utf8_lossy(&take(&err, Duration::ZERO))
                );
            }
        }
    };
    let grace = Duration::from_millis(500);
    std::process::Output {
        status,
        stdout: take(&out, grace),
        stderr: take(&err, grace),
    }
}

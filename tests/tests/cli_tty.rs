//! `berth run -t` driven through a pseudo-terminal the test allocates, as a person at a
//! terminal would: the container sees a terminal of the right size, follows a resize, the
//! local terminal is raw while the container owns it and restored afterwards, also when the
//! run fails. Root only.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::cli_fixture::{text, CliFixture, BUSYBOX};

/// A pty pair: the master, and the slave's path.
struct Pty {
    master: File,
    slave: String,
}

/// Open /dev/ptmx, unlock its slave and find its number.
fn open_pty() -> Pty {
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")
        .expect("open /dev/ptmx");
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which points at a live local.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    assert_eq!(r, 0, "unlock pty: {}", std::io::Error::last_os_error());
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, a live local.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) };
    assert_eq!(r, 0, "pty number: {}", std::io::Error::last_os_error());
    Pty {
        master,
        slave: format!("/dev/pts/{n}"),
    }
}

/// `stty -F TTY ARGS`; returns its output.
fn stty(tty: &str, args: &[&str]) -> String {
    let out = Command::new("stty")
        .arg("-F")
        .arg(tty)
        .args(args)
        .output()
        .expect("stty");
    assert!(out.status.success(), "stty {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Everything read from the master so far, collected by a thread.
fn collect(mut master: File) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = master.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// Wait until the output contains `needle`.
fn wait_for(buf: &Arc<Mutex<Vec<u8>>>, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let s = text(&buf.lock().unwrap_or_else(|e| e.into_inner()));
        if s.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}; terminal shows {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until the output after its first `from` bytes contains `needle`.
fn wait_for_after(buf: &Arc<Mutex<Vec<u8>>>, from: usize, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let s = text(&buf.lock().unwrap_or_else(|e| e.into_inner())[from..]);
        if s.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}; terminal shows {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawn `berth ARGS` on the pty's slave as its controlling terminal (`setsid -c`).
fn spawn_on(f: &CliFixture, pty: &Pty, args: &[&str]) -> std::process::Child {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&pty.slave)
            .expect("open slave")
    };
    let berth = f.berth();
    let mut c = Command::new("setsid");
    c.arg("-c").arg(berth.get_program()).args(berth.get_args());
    for (k, v) in berth.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.args(args)
        .stdin(Stdio::from(open()))
        .stdout(Stdio::from(open()))
        .stderr(Stdio::from(open()))
        .spawn()
        .expect("spawn berth on the pty")
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth -t did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tty_session_follows_resizes_and_restores_the_terminal() {
    if !berth_tests::require_root()
        || berth_tests::tool("setsid").is_none()
        || berth_tests::tool("stty").is_none()
    {
        return;
    }
    let f = CliFixture::new("cli-tty");
    f.seed_busybox();
    let pty = open_pty();
    stty(
        &pty.slave,
        &["rows", "30", "cols", "100", "icanon", "echo", "isig"],
    );
    let before = stty(&pty.slave, &["-g"]);
    // Hold a slave end for the whole test: when the last one closes (between sessions), reads
    // on the master fail with EIO and the collector would stop.
    let _hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&pty.slave)
        .expect("hold the slave");
    let out = collect(pty.master.try_clone().expect("dup master"));
    let mut child = spawn_on(
        &f,
        &pty,
        &["run", "--rm", "-t", "--net", "none", BUSYBOX, "tty1", "sh", "-c",
          "tty; stty size; while [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; stty size; exit 5"],
    );
    wait_for(&out, "30 100", Duration::from_secs(60));
    let during = stty(&pty.slave, &["-a"]);
    assert!(
        during.contains("-icanon") && during.contains("-echo"),
        "raw while attached: {during}"
    );
    // Resizing the terminal sends berth SIGWINCH; berth forwards the size to the container's pty.
    stty(&pty.slave, &["rows", "40", "cols", "120"]);
    wait_for(&out, "40 120", Duration::from_secs(30));
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(5),
        "terminal: {}",
        text(&out.lock().unwrap_or_else(|e| e.into_inner()))
    );
    let shown = text(&out.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        shown.contains("/dev/pts/"),
        "the container has a terminal: {shown}"
    );
    assert_eq!(stty(&pty.slave, &["-g"]), before, "terminal modes restored");
    assert!(f.ok(&["containers", "ls", "-q"]).trim().is_empty());

    // `tasks exec -t`: the exec's terminal has the local size from its first instruction.
    f.ok(&["run", "-d", "--net", "none", BUSYBOX, "bg", "sleep", "300"]);
    let seen = out.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut child = spawn_on(
        &f,
        &pty,
        &[
            "tasks",
            "exec",
            "-t",
            "--exec-id",
            "sz",
            "bg",
            "sh",
            "-c",
            "stty size; exit 2",
        ],
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    wait_for_after(&out, seen, "40 120", Duration::from_secs(10));
    assert_eq!(stty(&pty.slave, &["-g"]), before, "restored after exec -t");
    f.ok(&["rm", "-f", "bg"]);

    // A run that fails after the terminal went raw restores it too.
    let mut child = spawn_on(
        &f,
        &pty,
        &[
            "run",
            "--rm",
            "-t",
            "--net",
            "none",
            BUSYBOX,
            "tty2",
            "/no/such/binary",
        ],
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(!status.success());
    assert_eq!(
        stty(&pty.slave, &["-g"]),
        before,
        "restored after a failure"
    );
    assert!(f.ok(&["containers", "ls", "-q"]).trim().is_empty());
    f.fx.guard.assert_clean();
}

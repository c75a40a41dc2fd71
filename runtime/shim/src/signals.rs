//! Signal dispositions the shim hands on to the runtime and containers.
//!
//! Ignored dispositions survive exec, so the shim resets every ignored signal (but SIGPIPE,
//! which Rust's std resets in children) when it daemonises, and its runtime commands are
//! spawned through fork+exec with the glibc-internal signals 32/33 set back to default:
//! glibc's posix_spawn (which std uses when it can) leaves those two ignored in the child,
//! and glibc's `sigaction` refuses to touch them, hence raw `rt_sigaction`.
//! Everything here must stay async-signal-safe (it runs between fork and exec).

/// The kernel's `struct sigaction` (x86_64/aarch64 layout) for raw `rt_sigaction`.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

const EMPTY: KernelSigaction = KernelSigaction {
    handler: libc::SIG_DFL,
    flags: 0,
    restorer: 0,
    mask: 0,
};

/// The current handler of `sig` (SIG_DFL, SIG_IGN or an address), if the kernel says.
fn handler(sig: i32) -> Option<usize> {
    let mut old = EMPTY;
    // SAFETY: rt_sigaction with a null new action only writes the old one into `old`, a live
    // struct of the kernel's layout; sigsetsize is 8 as the kernel expects.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KernelSigaction>(),
            &mut old as *mut KernelSigaction,
            8usize,
        )
    };
    (rc == 0).then_some(old.handler)
}

/// Set `sig` to SIG_DFL (no handler code runs, so no restorer is needed).
pub fn set_default(sig: i32) {
    let dfl = EMPTY;
    // SAFETY: reads a live struct of the kernel's layout; writes nothing back.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &dfl as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// Give every ignored signal but SIGPIPE its default action (at daemon start).
pub fn reset_ignored() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == libc::SIGPIPE {
            continue;
        }
        if handler(sig) == Some(libc::SIG_IGN) {
            set_default(sig);
        }
    }
}

/// In a forked child before exec: glibc's internal signals back to default.
pub fn reset_internal_in_child() {
    set_default(32);
    set_default(33);
}

//! Seccomp for berth-runc: compiles the spec's `linux.seccomp` into a classic BPF program (our own generator,
//! no libseccomp) in the parent, and installs it in the container init right before `execve`.
//!
//! Semantics follow the OCI runtime spec and runc: per-rule actions (ALLOW, ERRNO(errnoRet), KILL,
//! KILL_PROCESS, KILL_THREAD, TRAP, TRACE, LOG; NOTIFY is refused since there is no seccomp agent support),
//! argument conditions (several in one rule = AND, several rules for one syscall = OR, checked in spec order
//! before an unconditional rule for the same syscall), architectures (x86_64 is always included; x86 and x32
//! when listed; any other ABI is killed), `defaultErrnoRet`, and the filter flags. Unknown syscall names are
//! skipped with a debug message, like runc; as in runc, when the default action refuses, syscall numbers above
//! the largest one the spec names (per ABI) get ENOSYS.
//!
//! [`SeccompProgram::install`] runs in the forked container init: it must never allocate, lock or log, and
//! makes exactly one syscall. The kernel requires no_new_privs or CAP_SYS_ADMIN at that point.

mod bpf;
mod default_profile;
mod syscalls;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

pub use default_profile::default_profile;

/// Errors of the seccomp compiler and installer; messages name the syscall or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The spec uses an action berth-runc cannot carry out.
    #[error("seccomp: action {action} for {syscalls} is not supported: {reason}")]
    UnsupportedAction {
        /// The action as spelt in the spec.
        action: String,
        /// The syscalls of the rule (or "the default action").
        syscalls: String,
        /// Why.
        reason: &'static str,
    },
    /// An errno value the kernel cannot return.
    #[error("seccomp: errnoRet {errno} for {syscalls} is out of range (1..=4095)")]
    InvalidErrno {
        /// The value.
        errno: u32,
        /// Where it was used.
        syscalls: String,
    },
    /// An argument condition is invalid.
    #[error("seccomp: invalid argument condition for {syscalls}: {reason}")]
    InvalidArg {
        /// The syscalls of the rule.
        syscalls: String,
        /// Why.
        reason: String,
    },
    /// The compiled program exceeds the kernel's 4096 instructions.
    #[error("seccomp: the compiled filter has {len} instructions, more than the kernel's 4096")]
    TooLong {
        /// Instructions generated.
        len: usize,
    },
    /// seccomp(2) refused the program.
    #[error("seccomp: installing the filter failed: {source}")]
    Install {
        /// The errno.
        source: io::Error,
    },
    /// SECCOMP_FILTER_FLAG_TSYNC could not apply the filter to another thread.
    #[error("seccomp: SECCOMP_FILTER_FLAG_TSYNC could not synchronise thread {tid}")]
    Tsync {
        /// The thread that kept another filter.
        tid: libc::c_long,
    },
    /// This host's architecture has no syscall table here.
    #[error("seccomp: filters are only supported on x86_64 hosts")]
    UnsupportedHost,
    /// A bug in the BPF generator.
    #[error("seccomp: internal error generating BPF: {0}")]
    Internal(&'static str),
}

/// A compiled filter, ready to install.
pub struct SeccompProgram {
    filter: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeccompProgram")
            .field("instructions", &self.filter.len())
            .field("flags", &self.flags)
            .finish()
    }
}

static DEBUG_LOGGER: OnceLock<fn(&str)> = OnceLock::new();

/// Sets where this module's debug messages go (first call wins; default: nowhere). Called in the parent only.
pub fn set_debug_logger(f: fn(&str)) {
    let _ = DEBUG_LOGGER.set(f);
}

fn debug(msg: &str) {
    if let Some(f) = DEBUG_LOGGER.get() {
        f(msg);
    }
}

/// The kernel's largest errno (MAX_ERRNO).
const MAX_ERRNO: u32 = 4095;

fn action_code(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    what: &dyn Fn() -> String,
) -> Result<u32, SeccompError> {
    let data = |errno: Option<u32>| -> Result<u32, SeccompError> {
        let e = errno.unwrap_or(libc::EPERM as u32);
        if e > MAX_ERRNO {
            return Err(SeccompError::InvalidErrno {
                errno: e,
                syscalls: what(),
            });
        }
        Ok(e)
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            libc::SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => libc::SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data(errno)?,
        LinuxSeccompAction::ScmpActTrace => libc::SECCOMP_RET_TRACE | data(errno)?,
        LinuxSeccompAction::ScmpActLog => libc::SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction {
                action: "SCMP_ACT_NOTIFY".into(),
                syscalls: what(),
                reason: "berth-runc has no seccomp agent (listenerPath) support",
            })
        }
    })
}

fn op(o: LinuxSeccompOperator) -> bpf::Op {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => bpf::Op::Ne,
        LinuxSeccompOperator::ScmpCmpLt => bpf::Op::Lt,
        LinuxSeccompOperator::ScmpCmpLe => bpf::Op::Le,
        LinuxSeccompOperator::ScmpCmpEq => bpf::Op::Eq,
        LinuxSeccompOperator::ScmpCmpGe => bpf::Op::Ge,
        LinuxSeccompOperator::ScmpCmpGt => bpf::Op::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => bpf::Op::MaskedEq,
    }
}

/// A syscall's numbers in every ABI (`syscalls::NONE` where it has none).
fn syscall_nrs(name: &str) -> Option<[u32; 3]> {
    let t = syscalls::SYSCALLS;
    t.binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| t[i].1)
}

/// A syscall's number in one ABI (`syscalls::X86_64`, `I386` or `X32`).
#[cfg(test)]
fn syscall_nr(abi: usize, name: &str) -> Option<u32> {
    syscall_nrs(name)
        .map(|n| n[abi])
        .filter(|n| *n != syscalls::NONE)
}

/// Compiles the spec's seccomp section (parent side, before fork).
pub fn compile(s: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedHost);
    }
    let default_action = action_code(s.default_action(), s.default_errno_ret(), &|| {
        "the default action".to_string()
    })?;
    // Like runc: when the default action refuses, syscalls newer than every syscall the spec names get ENOSYS
    // (what an older kernel answers), so libcs fall back instead of failing with the default errno.
    let permissive = matches!(
        s.default_action(),
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
    );
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let mut spec = bpf::FilterSpec {
        default_action,
        bad_arch_action: libc::SECCOMP_RET_KILL_PROCESS,
        newer_action: (!permissive && default_action != enosys).then_some(enosys),
        ..Default::default()
    };
    for a in s.architectures().iter().flatten() {
        match a {
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 => {}
            Arch::ScmpArchX86 => spec.i386 = Some(bpf::Table::new()),
            Arch::ScmpArchX32 => spec.x32 = Some(bpf::Table::new()),
            other => debug(&format!(
                "seccomp: architecture {other:?} cannot occur on this host: ignored"
            )),
        }
    }
    for rule in s.syscalls().iter().flatten() {
        let names = || rule.names().join(",");
        let action = action_code(rule.action(), rule.errno_ret(), &names)?;
        let mut args = Vec::new();
        for a in rule.args().iter().flatten() {
            let index = u8::try_from(a.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| SeccompError::InvalidArg {
                    syscalls: names(),
                    reason: format!("argument index {} is not in 0..6", a.index()),
                })?;
            let op = op(a.op());
            if op == bpf::Op::MaskedEq && a.value_two().is_none() {
                debug(&format!(
                    "seccomp: {}: SCMP_CMP_MASKED_EQ without valueTwo compares with 0",
                    names()
                ));
            }
            args.push(bpf::ArgCmp {
                index,
                op,
                value: a.value(),
                value_two: a.value_two().unwrap_or(0),
            });
        }
        let idx = u32::try_from(spec.rules.len()).map_err(|_| SeccompError::TooLong {
            len: spec.rules.len(),
        })?;
        spec.rules.push(bpf::Rule { action, args });
        for name in rule.names() {
            let mut found = false;
            let nrs = syscall_nrs(name).unwrap_or([syscalls::NONE; 3]);
            let abis: [(Option<&mut bpf::Table>, u32); 3] = [
                (Some(&mut spec.x86_64), nrs[syscalls::X86_64]),
                (spec.x32.as_mut(), nrs[syscalls::X32]),
                (spec.i386.as_mut(), nrs[syscalls::I386]),
            ];
            for (table, nr) in abis {
                let Some(table) = table.filter(|_| nr != syscalls::NONE) else {
                    continue;
                };
                found = true;
                table.push((nr, idx));
            }
            if !found {
                debug(&format!(
                    "seccomp: unknown syscall {name:?} for the spec's architectures: skipped"
                ));
            }
        }
    }
    let mut flags: libc::c_ulong = 0;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                debug("seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV only applies to a listener: ignored");
                0
            }
        };
    }
    let filter = bpf::generate(&spec)?;
    Ok(SeccompProgram { filter, flags })
}

impl SeccompProgram {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.filter.len()
    }

    /// Whether the program is empty (never, for a compiled program).
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    /// Installs the filter on the calling thread: one seccomp(2) call, no allocation (safe after fork).
    pub fn install(&self) -> Result<(), SeccompError> {
        let Ok(len) = u16::try_from(self.filter.len()) else {
            return Err(SeccompError::TooLong {
                len: self.filter.len(),
            });
        };
        let prog = libc::sock_fprog {
            len,
            filter: self.filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `self.filter`, which outlives the call; the kernel copies the program and
        // never writes through the pointer. The flags are the SECCOMP_FILTER_FLAG_* bits built by `compile`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            // With SECCOMP_FILTER_FLAG_TSYNC a positive result is the thread that could not be synchronised.
            tid if tid > 0 => Err(SeccompError::Tsync { tid }),
            _ => Err(SeccompError::Install {
                source: io::Error::last_os_error(),
            }),
        }
    }
}

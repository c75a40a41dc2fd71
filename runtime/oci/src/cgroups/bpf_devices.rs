//! Device rules on cgroup v2: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's
//! cgroup (v2 has no devices.allow/deny files).
//!
//! The program mirrors the v1 semantics: rules are checked from the last to the first and the first match
//! decides (so later rules override earlier ones), nothing matching = deny. A new program is attached with
//! BPF_F_ALLOW_MULTI and the programs attached before it are detached afterwards, so the cgroup is never
//! without a filter during an update. This file must never attach to or detach from any cgroup but the
//! container's own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `struct bpf_cgroup_dev_ctx` access bits and device types.
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One eBPF instruction (`struct bpf_insn`; dst register in the low nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const MOV64_K: u8 = 0xb7;
const MOV64_X: u8 = 0xbf;
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

/// Compiles device rules (spec order) into the program.
pub(crate) fn program(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, CgroupError> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND64_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH64_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        match r.typ().unwrap_or_default() {
            LinuxDeviceType::A => {}
            LinuxDeviceType::B => block.push(insn(JNE_K, 2, 0, 0, DEV_BLOCK)),
            LinuxDeviceType::C | LinuxDeviceType::U => block.push(insn(JNE_K, 2, 0, 0, DEV_CHAR)),
            LinuxDeviceType::P => continue,
        }
        let access = r
            .access()
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or("rwm");
        let mut bits = 0;
        for c in access.chars() {
            bits |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => {
                    return Err(CgroupError::InvalidValue {
                        what: "devices access".into(),
                        reason: format!("{access:?} is not a combination of r, w and m"),
                    })
                }
            };
        }
        if bits != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The request must be a subset of the rule's access.
            block.push(insn(MOV64_X, 1, 3, 0, 0));
            block.push(insn(AND64_K, 1, 0, 0, !bits & 7));
            block.push(insn(JNE_K, 1, 0, 0, 0));
        }
        for (reg, n) in [(4u8, r.major()), (5u8, r.minor())] {
            if let Some(n) = n.filter(|v| *v >= 0) {
                let n = i32::try_from(n).map_err(|_| CgroupError::InvalidValue {
                    what: "devices major/minor".into(),
                    reason: format!("{n} is out of range"),
                })?;
                block.push(insn(JNE_K, reg, 0, 0, n));
            }
        }
        let unconditional = block.is_empty();
        block.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow())));
        block.push(insn(EXIT, 0, 0, 0, 0));
        // Every conditional jump skips to the end of this rule's block.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K {
                ins.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
            }
        }
        p.extend(block);
        if unconditional {
            // Everything after an unconditional rule is unreachable, and the verifier refuses dead code.
            return Ok(p);
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    Ok(p)
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`, valid for its whole size; the kernel
    // zero-extends a shorter attr and writes back only within the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_from(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(rc).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn err(dir: &Path, what: &str, source: io::Error) -> CgroupError {
    CgroupError::Write {
        path: dir.to_path_buf(),
        value: format!("eBPF device program ({what})"),
        source,
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd, CgroupError> {
    std::fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })
}

/// Ids of the device programs attached to the cgroup `dir`.
pub(crate) fn attached(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let cg = open_dir(dir)?;
    let mut ids = [0u32; 64];
    let mut q = QueryAttr {
        target_fd: u32::try_from(cg.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q).map_err(|e| err(dir, "query", e))?;
    Ok(ids[..(q.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Loads the program for `rules` and makes it the only device program of the cgroup `dir`.
pub(crate) fn apply(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    let prog = program(rules)?;
    let license: &'static std::ffi::CStr = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"berth_devcg");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    let prog_fd = fd_from(bpf(BPF_PROG_LOAD, &mut load).map_err(|e| err(dir, "load", e))?)
        .map_err(|e| err(dir, "load", e))?;
    let old = attached(dir)?;
    let cg = open_dir(dir)?;
    let cg_fd = u32::try_from(cg.as_raw_fd()).unwrap_or(0);
    let mut attach = AttachAttr {
        target_fd: cg_fd,
        attach_bpf_fd: u32::try_from(prog_fd.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| err(dir, "attach", e))?;
    for id in old {
        let mut g = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_fd =
            fd_from(bpf(BPF_PROG_GET_FD_BY_ID, &mut g).map_err(|e| err(dir, "get old", e))?)
                .map_err(|e| err(dir, "get old", e))?;
        let mut detach = AttachAttr {
            target_fd: cg_fd,
            attach_bpf_fd: u32::try_from(old_fd.as_raw_fd()).unwrap_or(0),
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut detach).map_err(|e| err(dir, "detach old", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.into()));
        r
    }

    /// An interpreter for the few instructions `program` emits.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access << 16) | typ) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            match i.code {
                LDX_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                AND64_K => r[dst] &= i.imm as i64 as u64,
                RSH64_K => r[dst] >>= i.imm,
                MOV64_K => r[dst] = i.imm as i64 as u64,
                MOV64_X => r[dst] = r[src],
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn later_rules_win_and_default_is_deny() -> Result<(), CgroupError> {
        use LinuxDeviceType::{A, B, C};
        let rules = vec![
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(true, C, Some(1), Some(5), "r"),
            rule(true, C, Some(136), None, "rw"),
            rule(false, C, Some(136), Some(7), "rwm"),
            rule(true, B, None, None, "m"),
        ];
        let p = program(&rules)?;
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 5), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 136, 2), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 136, 7), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 136, 2), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 8, 0), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 4, 1), 0);
        // An unconditional rule ends the program (the verifier refuses unreachable code).
        let p = program(&[
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(true, A, None, None, "rwm"),
            rule(false, C, Some(1), Some(5), "rwm"),
        ])?;
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        assert_eq!(p[p.len() - 2], insn(MOV64_K, 0, 0, 0, 1));
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 5), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 4, 1), 1);
        Ok(())
    }
}

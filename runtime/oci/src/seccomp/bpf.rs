//! Classic BPF generation for seccomp filters: a tiny label assembler and the filter layout.
//!
//! Layout: check `seccomp_data.arch` (and the x32 bit of `nr` for AUDIT_ARCH_X86_64), then a binary search
//! over the syscall numbers of that ABI, each leaf returning its action or jumping to a body that tests the
//! arguments (64-bit comparisons split in 32-bit halves, little endian). Every conditional jump is local
//! (a few instructions); far targets are reached through `ja`, whose offset is 32 bits, so no program can hit
//! the 8-bit limit of conditional jumps. This file must never emit a program the kernel would have to reject
//! silently: every jump is resolved forwards and checked.

use super::SeccompError;

/// `struct seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// BPF_LD | BPF_W | BPF_ABS.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_RET_K: u16 = 0x06;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JGT_K: u16 = 0x05 | 0x20;
const BPF_JGE_K: u16 = 0x05 | 0x30;

/// AUDIT_ARCH values reported in `seccomp_data.arch`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// x32 syscalls arrive as AUDIT_ARCH_X86_64 with this bit set in `nr`.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The most instructions the kernel accepts (BPF_MAXINSNS).
pub(crate) const MAX_INSNS: usize = 4096;

/// A comparison operator on one 64-bit syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq,
}

/// One argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgCmp {
    /// Argument index, 0..6.
    pub index: u8,
    pub op: Op,
    /// The value, or the mask for MaskedEq.
    pub value: u64,
    /// The value compared after masking (MaskedEq only).
    pub value_two: u64,
}

/// A rule for one syscall: the action when every condition holds (no condition = always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub action: u32,
    pub args: Vec<ArgCmp>,
}

/// Rules per syscall number of one ABI.
/// `(syscall number, index in FilterSpec::rules)` in spec order; `dispatch` sorts it (stably) by number.
pub(crate) type Table = Vec<(u32, u32)>;

/// Everything the generator needs.
#[derive(Debug, Default)]
pub(crate) struct FilterSpec {
    pub default_action: u32,
    pub bad_arch_action: u32,
    /// Action for syscall numbers above the largest one the spec names in an ABI (runc's -ENOSYS stub, so
    /// that syscalls newer than the profile fail like on an older kernel); `None` = the default action.
    pub newer_action: Option<u32>,
    /// Every rule once; the tables refer to them by index.
    pub rules: Vec<Rule>,
    /// x86_64 ABI (always present: the native architecture).
    pub x86_64: Table,
    /// x32 ABI, when the spec lists it.
    pub x32: Option<Table>,
    /// i386 ABI, when the spec lists it.
    pub i386: Option<Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Target {
    Next,
    To(Label),
}

#[derive(Debug)]
enum Item {
    Stmt {
        code: u16,
        k: u32,
    },
    Jump {
        code: u16,
        k: u32,
        jt: Target,
        jf: Target,
    },
    Ja(Label),
    Bind(Label),
}

/// A forward-only label assembler.
#[derive(Default)]
struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }
    fn bind(&mut self, l: Label) {
        self.items.push(Item::Bind(l));
    }
    fn ld(&mut self, off: u32) {
        self.items.push(Item::Stmt {
            code: BPF_LD_W_ABS,
            k: off,
        });
    }
    fn and(&mut self, k: u32) {
        self.items.push(Item::Stmt {
            code: BPF_ALU_AND_K,
            k,
        });
    }
    fn ret(&mut self, k: u32) {
        self.items.push(Item::Stmt { code: BPF_RET_K, k });
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.items.push(Item::Jump { code, k, jt, jf });
    }
    fn ja(&mut self, l: Label) {
        self.items.push(Item::Ja(l));
    }

    /// Resolves labels into `sock_filter` instructions.
    fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut pos = vec![usize::MAX; self.labels];
        let mut n = 0usize;
        for it in &self.items {
            match it {
                Item::Bind(l) => pos[l.0] = n,
                _ => n += 1,
            }
        }
        if n > MAX_INSNS {
            return Err(SeccompError::TooLong { len: n });
        }
        let offset = |at: usize, t: Target| -> Result<usize, SeccompError> {
            match t {
                Target::Next => Ok(0),
                Target::To(l) => {
                    let p = pos[l.0];
                    if p == usize::MAX || p <= at {
                        return Err(SeccompError::Internal("unbound or backward jump"));
                    }
                    Ok(p - at - 1)
                }
            }
        };
        let mut out = Vec::with_capacity(n);
        for it in &self.items {
            let at = out.len();
            let ins = match *it {
                Item::Bind(_) => continue,
                Item::Stmt { code, k } => libc::sock_filter {
                    code,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Item::Jump { code, k, jt, jf } => {
                    let (t, f) = (offset(at, jt)?, offset(at, jf)?);
                    libc::sock_filter {
                        code,
                        jt: u8::try_from(t)
                            .map_err(|_| SeccompError::Internal("conditional jump too far"))?,
                        jf: u8::try_from(f)
                            .map_err(|_| SeccompError::Internal("conditional jump too far"))?,
                        k,
                    }
                }
                Item::Ja(l) => libc::sock_filter {
                    code: BPF_JA,
                    jt: 0,
                    jf: 0,
                    k: u32::try_from(offset(at, Target::To(l))?)
                        .map_err(|_| SeccompError::Internal("jump too far"))?,
                },
            };
            out.push(ins);
        }
        Ok(out)
    }
}

/// What a syscall number leads to in the dispatch tree.
enum Leaf {
    Ret(u32),
    Body(Label),
}

/// Generates the whole filter.
pub(crate) fn generate(spec: &FilterSpec) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let mut a = Asm::default();
    let l64 = a.label();
    a.ld(OFF_ARCH);
    let skip = a.label();
    a.jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, Target::Next, Target::To(skip));
    a.ja(l64);
    a.bind(skip);
    let l32 = spec.i386.as_ref().map(|_| a.label());
    if let Some(l32) = l32 {
        let skip = a.label();
        a.jump(BPF_JEQ_K, AUDIT_ARCH_I386, Target::Next, Target::To(skip));
        a.ja(l32);
        a.bind(skip);
    }
    a.ret(spec.bad_arch_action);

    // AUDIT_ARCH_X86_64: x32 calls carry X32_SYSCALL_BIT; without x32 in the spec they are a bad arch, never
    // a lookup in the x86_64 table (that would let x32 calls bypass the filter).
    a.bind(l64);
    a.ld(OFF_NR);
    let not_x32 = a.label();
    a.jump(
        BPF_JGE_K,
        X32_SYSCALL_BIT,
        Target::Next,
        Target::To(not_x32),
    );
    let lx32 = spec.x32.as_ref().map(|_| a.label());
    match lx32 {
        Some(l) => a.ja(l),
        None => a.ret(spec.bad_arch_action),
    }
    a.bind(not_x32);
    dispatch(&mut a, &spec.x86_64, spec);
    if let (Some(l), Some(t)) = (lx32, &spec.x32) {
        a.bind(l);
        dispatch(&mut a, t, spec);
    }
    if let (Some(l), Some(t)) = (l32, &spec.i386) {
        a.bind(l);
        a.ld(OFF_NR);
        dispatch(&mut a, t, spec);
    }
    a.finish()
}

/// The dispatch tree for one ABI (A holds `nr`), then the argument bodies.
///
/// Syscall numbers become ranges that cover all of u32 (gaps get the default action, neighbours with the same
/// unconditional action merge), so the binary search needs no equality test at its leaves: an allow-list of a
/// few hundred syscalls compiles to a few dozen ranges.
fn dispatch(a: &mut Asm, table: &Table, spec: &FilterSpec) {
    let (default, newer) = (spec.default_action, spec.newer_action);
    let mut sorted = table.clone();
    sorted.sort_by_key(|(nr, _)| *nr);
    let mut bodies: Vec<(Label, Vec<&Rule>)> = Vec::new();
    let mut ranges: Vec<(u32, Leaf)> = Vec::new();
    let push = |ranges: &mut Vec<(u32, Leaf)>, start: u32, leaf: Leaf| {
        let same = match (ranges.last(), &leaf) {
            (Some((_, Leaf::Ret(x))), Leaf::Ret(y)) => x == y,
            _ => false,
        };
        if !same {
            ranges.push((start, leaf));
        }
    };
    let mut next: Option<u32> = Some(0);
    for group in sorted.chunk_by(|x, y| x.0 == y.0) {
        let nr = group[0].0;
        let rules: Vec<&Rule> = group
            .iter()
            .filter_map(|(_, i)| spec.rules.get(*i as usize))
            .collect();
        if let Some(n) = next {
            if nr > n {
                push(&mut ranges, n, Leaf::Ret(default));
            }
        }
        let leaf = if rules.iter().all(|r| r.args.is_empty()) {
            Leaf::Ret(rules.first().map_or(default, |r| r.action))
        } else {
            let l = a.label();
            bodies.push((l, rules));
            Leaf::Body(l)
        };
        push(&mut ranges, nr, leaf);
        next = nr.checked_add(1);
    }
    if let Some(n) = next {
        let tail = if table.is_empty() {
            default
        } else {
            newer.unwrap_or(default)
        };
        push(&mut ranges, n, Leaf::Ret(tail));
    }
    tree(a, &ranges);
    for (l, rules) in bodies {
        a.bind(l);
        // Conditional rules in spec order (first match wins, several rules = OR), then the unconditional one.
        for r in rules.iter().filter(|r| !r.args.is_empty()) {
            let next = a.label();
            for c in &r.args {
                compare(a, c, next);
            }
            a.ret(r.action);
            a.bind(next);
        }
        let fallback = rules
            .iter()
            .find(|r| r.args.is_empty())
            .map_or(default, |r| r.action);
        a.ret(fallback);
    }
}

/// Binary search over range starts (sorted, the first one 0): each leaf is its range's action.
fn tree(a: &mut Asm, ranges: &[(u32, Leaf)]) {
    match ranges {
        [] => {}
        [(_, leaf)] => match leaf {
            Leaf::Ret(k) => a.ret(*k),
            Leaf::Body(l) => a.ja(*l),
        },
        _ => {
            let mid = ranges.len() / 2;
            let right = a.label();
            let left = a.label();
            a.jump(BPF_JGE_K, ranges[mid].0, Target::Next, Target::To(left));
            a.ja(right);
            a.bind(left);
            tree(a, &ranges[..mid]);
            a.bind(right);
            tree(a, &ranges[mid..]);
        }
    }
}

/// Emits one 64-bit argument test: falls through when it holds, jumps to `fail` otherwise.
fn compare(a: &mut Asm, c: &ArgCmp, fail: Label) {
    let lo = OFF_ARGS + 8 * u32::from(c.index);
    let hi = lo + 4;
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (vh, vl) = split(c.value);
    let ok = a.label();
    let cf = a.label();
    let (okt, cft) = (Target::To(ok), Target::To(cf));
    match c.op {
        Op::Eq => {
            a.ld(hi);
            a.jump(BPF_JEQ_K, vh, Target::Next, cft);
            a.ld(lo);
            a.jump(BPF_JEQ_K, vl, okt, cft);
        }
        Op::Ne => {
            a.ld(hi);
            a.jump(BPF_JEQ_K, vh, Target::Next, okt);
            a.ld(lo);
            a.jump(BPF_JEQ_K, vl, cft, okt);
        }
        Op::Gt | Op::Ge => {
            a.ld(hi);
            a.jump(BPF_JGT_K, vh, okt, Target::Next);
            a.jump(BPF_JEQ_K, vh, Target::Next, cft);
            a.ld(lo);
            let code = if c.op == Op::Gt { BPF_JGT_K } else { BPF_JGE_K };
            a.jump(code, vl, okt, cft);
        }
        Op::Lt | Op::Le => {
            a.ld(hi);
            a.jump(BPF_JGT_K, vh, cft, Target::Next);
            a.jump(BPF_JEQ_K, vh, Target::Next, okt);
            a.ld(lo);
            let code = if c.op == Op::Lt { BPF_JGE_K } else { BPF_JGT_K };
            a.jump(code, vl, cft, okt);
        }
        Op::MaskedEq => {
            let (mh, ml) = (vh, vl);
            let (dh, dl) = split(c.value_two);
            a.ld(hi);
            a.and(mh);
            a.jump(BPF_JEQ_K, dh, Target::Next, cft);
            a.ld(lo);
            a.and(ml);
            a.jump(BPF_JEQ_K, dl, okt, cft);
        }
    }
    a.bind(cf);
    a.ja(fail);
    a.bind(ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions this generator emits, to test programs without a kernel.
    pub(crate) fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, v) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_le_bytes([data[k], data[k + 1], data[k + 2], data[k + 3]]);
                }
                BPF_ALU_AND_K => acc &= ins.k,
                BPF_RET_K => return ins.k,
                BPF_JA => pc += ins.k as usize,
                BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => {
                    let t = match ins.code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGT_K => acc > ins.k,
                        _ => acc >= ins.k,
                    };
                    pc += usize::from(if t { ins.jt } else { ins.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn spec_with(rules: Vec<(u32, Rule)>) -> FilterSpec {
        let mut spec = FilterSpec {
            default_action: 0x7fff_0000,
            bad_arch_action: 0x8000_0000,
            ..Default::default()
        };
        for (i, (nr, r)) in rules.into_iter().enumerate() {
            spec.rules.push(r);
            spec.x86_64.push((nr, i as u32));
        }
        spec
    }

    #[test]
    fn every_operator_matches_u64_semantics() -> Result<(), SeccompError> {
        let values = [
            0u64,
            1,
            5,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0005,
            0x2_0000_0000,
            u64::MAX,
        ];
        let ops = [Op::Ne, Op::Lt, Op::Le, Op::Eq, Op::Ge, Op::Gt, Op::MaskedEq];
        for op in ops {
            for &v in &values {
                let cmp = ArgCmp {
                    index: 2,
                    op,
                    value: v,
                    value_two: v & 0x1_0000_0001,
                };
                let prog = generate(&spec_with(vec![(
                    7,
                    Rule {
                        action: 0x0005_0001,
                        args: vec![cmp],
                    },
                )]))?;
                for &x in &values {
                    let want = match op {
                        Op::Ne => x != v,
                        Op::Lt => x < v,
                        Op::Le => x <= v,
                        Op::Eq => x == v,
                        Op::Ge => x >= v,
                        Op::Gt => x > v,
                        Op::MaskedEq => x & v == v & 0x1_0000_0001,
                    };
                    let got = run(&prog, AUDIT_ARCH_X86_64, 7, [0, 0, x, 0, 0, 0]);
                    assert_eq!(got == 0x0005_0001, want, "{op:?} arg={x:#x} value={v:#x}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn big_tables_dispatch_right() -> Result<(), SeccompError> {
        let rules: Vec<(u32, Rule)> = (0..400u32)
            .filter(|n| n % 3 != 0)
            .map(|n| {
                (
                    n,
                    Rule {
                        action: 0x0005_0000 | n,
                        args: if n % 7 == 0 {
                            vec![ArgCmp {
                                index: 0,
                                op: Op::Eq,
                                value: u64::from(n),
                                value_two: 0,
                            }]
                        } else {
                            vec![]
                        },
                    },
                )
            })
            .collect();
        let prog = generate(&spec_with(rules))?;
        for n in 0..450u32 {
            let got = run(&prog, AUDIT_ARCH_X86_64, n, [u64::from(n), 0, 0, 0, 0, 0]);
            let want = if n % 3 != 0 && n < 400 {
                0x0005_0000 | n
            } else {
                0x7fff_0000
            };
            assert_eq!(got, want, "nr {n}");
            if n % 7 == 0 && n % 3 != 0 && n < 400 {
                let miss = run(
                    &prog,
                    AUDIT_ARCH_X86_64,
                    n,
                    [u64::from(n) + 1, 0, 0, 0, 0, 0],
                );
                assert_eq!(miss, 0x7fff_0000, "nr {n} arg mismatch");
            }
        }
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, 0x3fff_ffff, [0; 6]),
            0x7fff_0000
        );
        let mut spec = spec_with(vec![
            (
                3,
                Rule {
                    action: 0x7fff_0000,
                    args: vec![],
                },
            ),
            (
                9,
                Rule {
                    action: 0x7fff_0000,
                    args: vec![],
                },
            ),
        ]);
        spec.default_action = 0x0005_0001;
        spec.newer_action = Some(0x0005_0026);
        let newer = generate(&spec)?;
        assert_eq!(run(&newer, AUDIT_ARCH_X86_64, 9, [0; 6]), 0x7fff_0000);
        assert_eq!(run(&newer, AUDIT_ARCH_X86_64, 5, [0; 6]), 0x0005_0001);
        assert_eq!(run(&newer, AUDIT_ARCH_X86_64, 10, [0; 6]), 0x0005_0026);
        assert_eq!(
            run(&newer, AUDIT_ARCH_X86_64, 0x3fff_ffff, [0; 6]),
            0x0005_0026
        );
        assert_eq!(run(&prog, AUDIT_ARCH_I386, 1, [0; 6]), 0x8000_0000);
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1, [0; 6]),
            0x8000_0000
        );
        Ok(())
    }
}

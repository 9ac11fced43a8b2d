//! The seccomp filter a host program runs under: no user namespace of its own.
//!
//! In a user namespace of its own an unprivileged process holds every capability over what it
//! creates there (network namespaces and their nftables, mounts): the kernel code most container
//! escapes of recent years went through. Containers get the same rule from their runtime spec
//! (`runner::container`); host programs get it here, as a classic BPF program written out by hand.
//! A library (seccompiler) was not used: its filters kill a process whose call comes from the
//! other architecture the kernel runs (a 32-bit program on a 64-bit host) and leave x32 calls
//! unfiltered, where this one filters both.
//!
//! The rule, on every architecture the kernel accepts calls from:
//! - `unshare` and `clone` with `CLONE_NEWUSER` in their flags fail with EPERM;
//! - `clone3` fails with ENOSYS: its flags are in memory a filter cannot read, and the C library
//!   falls back to `clone` (threads still start), as Docker's default profile has it;
//! - every other call is allowed; a call from an architecture the filter does not know kills
//!   the process (none exists on the kernels it is built for).
//!
//! The program is built before the fork ([`Filter::new`]) and installed in the child after it
//! dropped to the instance's uid ([`Filter::install`]): only a `prctl` there. An agent that is not
//! root runs jobs as its own user, whose namespaces are that user's business: no filter then.
//! The operator may allow user namespaces (`--instance-user-namespaces`).

/// `struct seccomp_data`: where the kernel puts what the filter reads.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian), where every flag tested here lies.
const FIRST_ARG_LOW: u32 = 16;

/// From <linux/audit.h>: the machine, 64-bit and little-endian bits.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// x32 calls come as x86_64 with this bit set on the number; the numbers are otherwise the same.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const NO_SUCH_CALL: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// One architecture's numbers of the calls the rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub arch: u32,
    pub unshare: u32,
    pub clone: u32,
    pub clone3: u32,
    /// x86_64 only: x32 numbers are folded onto the native ones.
    pub folds_x32: bool,
}

/// The architectures the kernel this agent runs on takes calls from: its own, then its 32-bit
/// compatibility one.
pub fn host_architectures() -> Option<[Calls; 2]> {
    if cfg!(target_arch = "x86_64") {
        Some([
            Calls { arch: AUDIT_ARCH_X86_64, unshare: 272, clone: 56, clone3: 435, folds_x32: true },
            Calls { arch: AUDIT_ARCH_I386, unshare: 310, clone: 120, clone3: 435, folds_x32: false },
        ])
    } else if cfg!(target_arch = "aarch64") {
        Some([
            Calls { arch: AUDIT_ARCH_AARCH64, unshare: 97, clone: 220, clone3: 435, folds_x32: false },
            Calls { arch: AUDIT_ARCH_ARM, unshare: 337, clone: 120, clone3: 435, folds_x32: false },
        ])
    } else {
        None
    }
}

/// One classic BPF instruction, as `struct sock_filter` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jump_if_true: u8,
    pub jump_if_false: u8,
    pub k: u32,
}

const LOAD_WORD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const JUMP_IF_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JUMP_IF_ANY_BIT: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn statement(code: u16, k: u32) -> Instruction {
    Instruction { code, jump_if_true: 0, jump_if_false: 0, k }
}

/// A jump's target: the next instruction, or one of the shared tails at the program's end.
#[derive(Clone, Copy)]
enum Target {
    Next,
    TestFlags,
    NoSuchCall,
}

/// The program for `architectures`. Each architecture's block checks the number; the tails
/// (test the flags, answer ENOSYS) are shared. Jumps only go forward, as classic BPF requires.
pub fn program(architectures: &[Calls]) -> Vec<Instruction> {
    // Built with symbolic targets, then resolved: the tails' positions are known at the end.
    let mut built: Vec<(Instruction, Target, Target)> = Vec::new();
    let plain = |i: Instruction| (i, Target::Next, Target::Next);
    built.push(plain(statement(LOAD_WORD, ARCH)));
    for calls in architectures {
        // Not this architecture: skip its block (five instructions, six with the fold), with the
        // architecture still loaded for the next block's test.
        let block = if calls.folds_x32 { 6 } else { 5 };
        built.push(plain(Instruction { code: JUMP_IF_EQUAL, jump_if_true: 0, jump_if_false: block, k: calls.arch }));
        built.push(plain(statement(LOAD_WORD, NR)));
        if calls.folds_x32 {
            built.push(plain(statement(AND, !X32_SYSCALL_BIT)));
        }
        built.push((statement(JUMP_IF_EQUAL, calls.unshare), Target::TestFlags, Target::Next));
        built.push((statement(JUMP_IF_EQUAL, calls.clone), Target::TestFlags, Target::Next));
        built.push((statement(JUMP_IF_EQUAL, calls.clone3), Target::NoSuchCall, Target::Next));
        built.push(plain(statement(RETURN, ALLOW)));
    }
    // No block matched.
    built.push(plain(statement(RETURN, KILL)));
    let test_flags = built.len();
    built.push(plain(statement(LOAD_WORD, FIRST_ARG_LOW)));
    let new_user = libc::CLONE_NEWUSER as u32;
    built.push(plain(Instruction { code: JUMP_IF_ANY_BIT, jump_if_true: 0, jump_if_false: 1, k: new_user }));
    built.push(plain(statement(RETURN, DENY)));
    built.push(plain(statement(RETURN, ALLOW)));
    let no_such_call = built.len();
    built.push(plain(statement(RETURN, NO_SUCH_CALL)));
    let offset = |at: usize, target: Target, given: u8| -> u8 {
        let to = match target {
            Target::Next => return given,
            Target::TestFlags => test_flags,
            Target::NoSuchCall => no_such_call,
        };
        u8::try_from(to - at - 1).expect("the program is short: every jump fits in a byte")
    };
    built
        .iter()
        .enumerate()
        .map(|(at, (i, if_true, if_false))| Instruction {
            jump_if_true: offset(at, *if_true, i.jump_if_true),
            jump_if_false: offset(at, *if_false, i.jump_if_false),
            ..*i
        })
        .collect()
}

/// The filter, built before the fork (the child only installs it).
pub struct Filter(Vec<libc::sock_filter>);

impl Filter {
    /// The filter for this host's architectures; None where the agent does not know them.
    pub fn new() -> Option<Filter> {
        let program = program(&host_architectures()?);
        Some(Filter(
            program
                .into_iter()
                .map(|i| libc::sock_filter { code: i.code, jt: i.jump_if_true, jf: i.jump_if_false, k: i.k })
                .collect(),
        ))
    }

    /// Installs the filter on the calling process, for good (it is inherited and cannot be
    /// removed). Needs `no_new_privs` set, or CAP_SYS_ADMIN.
    ///
    /// With `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: kernels before 5.16 otherwise turn on the
    /// speculative-store-bypass mitigation for every process under a filter, which slows the
    /// job's own code, and it guards a process against code it runs itself, not a boundary this
    /// filter draws. A kernel without the flag (before 4.17) gets the filter without it.
    ///
    /// # Safety
    /// Only syscalls on memory prepared before the fork: meant for `pre_exec`.
    pub unsafe fn install(&self) -> std::io::Result<()> {
        let program = libc::sock_fprog { len: self.0.len() as libc::c_ushort, filter: self.0.as_ptr().cast_mut() };
        let program = &program as *const libc::sock_fprog;
        let mode = libc::c_long::from(libc::SECCOMP_SET_MODE_FILTER);
        // SAFETY: the program outlives the calls; the kernel copies it.
        let rc = unsafe { libc::syscall(libc::SYS_seccomp, mode, libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW, program) };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(error);
        }
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_seccomp, mode, 0 as libc::c_ulong, program) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel would answer: the program run on one call, as the kernel's classic BPF
    /// interpreter runs it (the instructions it uses; anything else fails the test).
    fn run(program: &[Instruction], arch: u32, nr: u32, first_arg: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&first_arg.to_le_bytes());
        let (mut accumulator, mut pc) = (0u32, 0usize);
        loop {
            let i = program.get(pc).unwrap_or_else(|| panic!("ran off the end at {pc}"));
            pc += 1;
            match i.code {
                LOAD_WORD => {
                    let at = i.k as usize;
                    accumulator = u32::from_le_bytes(data[at..at + 4].try_into().expect("four bytes"));
                }
                AND => accumulator &= i.k,
                JUMP_IF_EQUAL | JUMP_IF_ANY_BIT => {
                    let taken = if i.code == JUMP_IF_EQUAL { accumulator == i.k } else { accumulator & i.k != 0 };
                    pc += usize::from(if taken { i.jump_if_true } else { i.jump_if_false });
                }
                RETURN => return i.k,
                other => panic!("instruction {other:#x} is not one the filter uses"),
            }
        }
    }

    const NEW_USER: u64 = libc::CLONE_NEWUSER as u64;
    const THREAD: u64 =
        (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD) as u64;

    #[test]
    fn a_user_namespace_is_refused_on_every_architecture_the_kernel_takes_calls_from() {
        for host in [
            [
                Calls { arch: AUDIT_ARCH_X86_64, unshare: 272, clone: 56, clone3: 435, folds_x32: true },
                Calls { arch: AUDIT_ARCH_I386, unshare: 310, clone: 120, clone3: 435, folds_x32: false },
            ],
            [
                Calls { arch: AUDIT_ARCH_AARCH64, unshare: 97, clone: 220, clone3: 435, folds_x32: false },
                Calls { arch: AUDIT_ARCH_ARM, unshare: 337, clone: 120, clone3: 435, folds_x32: false },
            ],
        ] {
            let p = program(&host);
            for calls in host {
                let x32 = if calls.folds_x32 { vec![0, X32_SYSCALL_BIT] } else { vec![0] };
                for bit in x32 {
                    let call = |nr: u32, arg: u64| run(&p, calls.arch, nr | bit, arg);
                    for nr in [calls.unshare, calls.clone] {
                        assert_eq!(call(nr, NEW_USER), DENY, "{calls:?} {nr} {bit:#x}");
                        assert_eq!(call(nr, NEW_USER | libc::CLONE_NEWNS as u64 | libc::CLONE_NEWNET as u64), DENY);
                        // Other namespaces are the kernel's to refuse (they need a capability).
                        assert_eq!(call(nr, libc::CLONE_NEWNS as u64), ALLOW);
                        // Bits above the low word are not flags the call takes.
                        assert_eq!(call(nr, NEW_USER << 32), ALLOW);
                    }
                    assert_eq!(call(calls.clone, THREAD), ALLOW, "threads start");
                    assert_eq!(call(calls.clone, libc::SIGCHLD as u64), ALLOW, "fork");
                    assert_eq!(call(calls.clone3, 0), NO_SUCH_CALL, "clone3: the C library falls back to clone");
                    // Any other call, whatever its first argument.
                    for nr in [0, 1, 59, 221, 250, 1000] {
                        if ![calls.unshare, calls.clone, calls.clone3].contains(&nr) {
                            assert_eq!(call(nr, NEW_USER), ALLOW, "{calls:?} {nr}");
                        }
                    }
                }
            }
            // An architecture the kernel does not take calls from on this host.
            assert_eq!(run(&p, 0x4000_00B7, 272, NEW_USER), KILL);
        }
    }

    #[test]
    fn the_numbers_are_this_hosts_and_the_program_is_one_the_kernel_takes() {
        let host = host_architectures().expect("x86_64 and aarch64 are known");
        assert_eq!(host[0].unshare as libc::c_long, libc::SYS_unshare);
        assert_eq!(host[0].clone as libc::c_long, libc::SYS_clone);
        assert_eq!(host[0].clone3 as libc::c_long, libc::SYS_clone3);
        let p = program(&host);
        assert!(p.len() < 64 && p.last().is_some_and(|i| i.code == RETURN));
        // The kernel refuses a program it cannot prove ends: every jump lands inside it.
        for (at, i) in p.iter().enumerate().filter(|(_, i)| u32::from(i.code) & 0x07 == libc::BPF_JMP) {
            assert!(at + 1 + usize::from(i.jump_if_true.max(i.jump_if_false)) < p.len(), "{at}: {i:?}");
        }
    }
}

//! The candidate's seccomp filter (classic BPF, built once before `fork`).
//!
//! It refuses what an unprivileged process could still use to leave its fence: new
//! namespaces (`unshare`, `setns`, `clone` with a `CLONE_NEW*` flag; `clone3` reports
//! ENOSYS so libc falls back to `clone`, whose flags the filter can read), `ptrace` and
//! cross-process memory access, `bpf`, mounts, and `io_uring` (its operations, socket
//! creation included, would bypass this filter). `socket(AF_PACKET)` is always refused;
//! `socket(AF_UNIX)` unless Unix sockets are allow-listed (the path of a Unix connect is
//! out of seccomp's sight). Network connects are judged by the cgroup hooks, not here.

/// `seccomp_data` offsets: syscall number, audit architecture, low word of argument 0.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LO: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Every `CLONE_NEW*` flag (and CLONE_NEWTIME, which shares its bit with CSIGNAL).
const CLONE_NEW_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

/// System calls refused with EPERM.
const REFUSED: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_kexec_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

const LD_W_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// The filter; `refuse_unix_sockets` adds `socket(AF_UNIX, …)` to the refusals.
pub fn filter(refuse_unix_sockets: bool) -> Vec<libc::sock_filter> {
    let mut f = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ, AUDIT_ARCH, 1, 0),
        stmt(RET, RET_KILL),
        stmt(LD_W_ABS, NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 ABI (bit 30) would reach the same calls under other numbers.
        f.push(jump(JGE, 0x4000_0000, 0, 1));
        f.push(stmt(RET, RET_KILL));
    }
    for nr in REFUSED {
        f.push(jump(JEQ, *nr as u32, 0, 1));
        f.push(stmt(RET, RET_EPERM));
    }
    f.push(jump(JEQ, libc::SYS_clone3 as u32, 0, 1));
    f.push(stmt(RET, RET_ENOSYS));
    // clone: refused when it asks for a new namespace.
    f.push(jump(JEQ, libc::SYS_clone as u32, 0, 4));
    f.push(stmt(LD_W_ABS, ARG0_LO));
    f.push(jump(JSET, CLONE_NEW_FLAGS, 0, 1));
    f.push(stmt(RET, RET_EPERM));
    f.push(stmt(RET, RET_ALLOW));
    // socket: refused for the families the candidate has no business with.
    let mut families = vec![libc::AF_PACKET as u32];
    if refuse_unix_sockets {
        families.push(libc::AF_UNIX as u32);
    }
    let n = families.len() as u8;
    f.push(jump(JEQ, libc::SYS_socket as u32, 0, n + 3));
    f.push(stmt(LD_W_ABS, ARG0_LO));
    for (i, fam) in families.iter().enumerate() {
        // Jump to the EPERM return right after the last comparison.
        f.push(jump(JEQ, *fam, n - i as u8, 0));
    }
    f.push(stmt(RET, RET_ALLOW));
    f.push(stmt(RET, RET_EPERM));
    f.push(stmt(RET, RET_ALLOW));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions the filter uses, so the
    /// jump offsets are checked without installing the filter in the test process.
    fn run(f: &[libc::sock_filter], nr: libc::c_long, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
        data[4..8].copy_from_slice(&AUDIT_ARCH.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = f[pc];
            let code = u32::from(i.code);
            pc += 1;
            match code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                RET => return i.k,
                JEQ | JGE | JSET => {
                    let hit = match code {
                        JEQ => acc == i.k,
                        JGE => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if hit { i.jt } else { i.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn refuses_namespaces_ptrace_io_uring_and_chosen_socket_families() {
        let f = filter(true);
        assert_eq!(run(&f, libc::SYS_unshare, 0), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_setns, 0), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_ptrace, 0), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_io_uring_setup, 0), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_clone3, 0), RET_ENOSYS);
        assert_eq!(
            run(&f, libc::SYS_clone, libc::CLONE_NEWUSER as u64),
            RET_EPERM
        );
        assert_eq!(
            run(
                &f,
                libc::SYS_clone,
                (libc::CLONE_VM | libc::CLONE_THREAD) as u64
            ),
            RET_ALLOW
        );
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_UNIX as u64), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_PACKET as u64), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_INET6 as u64), RET_ALLOW);
        assert_eq!(run(&f, libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(run(&f, libc::SYS_connect, 0), RET_ALLOW);
    }

    #[test]
    fn unix_sockets_stay_when_allow_listed() {
        let f = filter(false);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_UNIX as u64), RET_ALLOW);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_PACKET as u64), RET_EPERM);
        assert_eq!(run(&f, libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
    }

    #[test]
    fn another_architecture_is_killed() {
        let f = filter(true);
        let mut g = f.clone();
        // Same program, but the arch comparison now fails.
        g[1].k ^= 1;
        assert_eq!(run(&g, libc::SYS_read, 0), RET_KILL);
    }
}

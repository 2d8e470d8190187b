//! The Unix-socket fence: cgroup `connect_unix` and `sendmsg_unix` hooks (Linux ≥ 6.7)
//! that allow only the `--allow-unix` paths and report every attempt with its path.
//!
//! aya 0.14 knows neither these attach types nor kfunc calls, so this small program is
//! assembled here and loaded with the `bpf` system call. It reads the socket address
//! through two generic kfuncs (`bpf_cast_to_kern_ctx`, `bpf_rdonly_cast`), whose BTF ids,
//! like the attach types' numbers, come from the running kernel's BTF. The allow-list is
//! compiled into the program as constants (masked 64-bit word compares). Anything the
//! kernel refuses here (an older kernel, a changed layout) leaves the candidate without
//! this fence, and the daemon says so.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use mirror_common::{GuardEvent, UNIX_PATH_BYTES, guard_action};

/// What the kernel's BTF says about the pieces the program needs.
#[derive(Debug, Default)]
struct KernelBtf {
    cast_to_kern_ctx: u32,
    rdonly_cast: u32,
    sockaddr_un: u32,
    unix_connect: u32,
    unix_sendmsg: u32,
    /// Byte offsets in `struct bpf_sock_addr_kern`.
    uaddr_off: u32,
    uaddrlen_off: u32,
}

fn read_btf(data: &[u8]) -> Option<KernelBtf> {
    let u32_at = |b: &[u8], o: usize| -> Option<u32> {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if data.get(0..2)? != [0x9f, 0xeb] {
        return None;
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
    let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
    let types = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strs = data.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let name = |o: u32| -> &[u8] {
        let rest = strs.get(o as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    };
    let mut k = KernelBtf::default();
    let (mut i, mut id) = (0usize, 1u32);
    while i + 12 <= types.len() {
        let (name_off, info) = (u32_at(types, i)?, u32_at(types, i + 4)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let n = name(name_off);
        i += 12;
        match (kind, n) {
            (12, b"bpf_cast_to_kern_ctx") => k.cast_to_kern_ctx = id,
            (12, b"bpf_rdonly_cast") => k.rdonly_cast = id,
            (4, b"sockaddr_un") => k.sockaddr_un = id,
            (4, b"bpf_sock_addr_kern") => {
                for m in 0..vlen {
                    let o = i + 12 * m;
                    let bits = u32_at(types, o + 8)?;
                    match name(u32_at(types, o)?) {
                        b"uaddr" => k.uaddr_off = bits / 8,
                        b"uaddrlen" => k.uaddrlen_off = bits / 8,
                        _ => {}
                    }
                }
            }
            (6, _) => {
                for m in 0..vlen {
                    let o = i + 8 * m;
                    match name(u32_at(types, o)?) {
                        b"BPF_CGROUP_UNIX_CONNECT" => k.unix_connect = u32_at(types, o + 4)?,
                        b"BPF_CGROUP_UNIX_SENDMSG" => k.unix_sendmsg = u32_at(types, o + 4)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        i += match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            _ => 0,
        };
        id += 1;
    }
    (k.cast_to_kern_ctx != 0
        && k.rdonly_cast != 0
        && k.sockaddr_un != 0
        && k.unix_connect != 0
        && k.unix_sendmsg != 0
        && k.uaddr_off != 0)
        .then_some(k)
}

/// One allowed form of a path: the address length range it comes with and the masked
/// bytes of `sun_path` (as the 14 little-endian words the program compares).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Variant {
    min_len: u32,
    max_len: u32,
    words: [u64; 14],
    masks: [u64; 14],
}

/// `sockaddr_un` is `sun_family` (2 bytes) then `sun_path`.
const FAMILY_BYTES: u32 = 2;

/// The forms a program may use to name `path`: exactly its bytes (Python and others
/// pass no terminating NUL), or its bytes then a NUL within a longer address (C's
/// `sizeof(struct sockaddr_un)`, Go's length + 1). `@name` is an abstract socket.
fn variants(path: &Path) -> Option<Vec<Variant>> {
    let text = path.as_os_str().as_encoded_bytes();
    let (bytes, abstract_name) = match text.strip_prefix(b"@") {
        Some(rest) => ([&[0u8][..], rest].concat(), true),
        None => (text.to_vec(), false),
    };
    if bytes.is_empty() || bytes.len() > UNIX_PATH_BYTES {
        return None;
    }
    let build = |n: usize, nul: bool| {
        let mut value = [0u8; 112];
        let mut mask = [0u8; 112];
        value[..bytes.len()].copy_from_slice(&bytes);
        mask[..n].fill(0xff);
        if nul {
            mask[bytes.len()] = 0xff;
        }
        let word = |b: &[u8; 112], k: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[8 * k..8 * k + 8]);
            u64::from_le_bytes(w)
        };
        let mut words = [0u64; 14];
        let mut masks = [0u64; 14];
        for k in 0..14 {
            words[k] = word(&value, k);
            masks[k] = word(&mask, k);
        }
        (words, masks)
    };
    let len = bytes.len() as u32;
    let (words, masks) = build(bytes.len(), false);
    let mut out = vec![Variant {
        min_len: FAMILY_BYTES + len,
        max_len: FAMILY_BYTES + len,
        words,
        masks,
    }];
    if !abstract_name && bytes.len() < UNIX_PATH_BYTES {
        let (words, masks) = build(bytes.len(), true);
        out.push(Variant {
            min_len: FAMILY_BYTES + len + 1,
            max_len: FAMILY_BYTES + UNIX_PATH_BYTES as u32,
            words,
            masks,
        });
    }
    Some(out)
}

/// One BPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A tiny assembler with forward labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, usize)>,
}

const LDX_DW: u8 = 0x79;
const LDX_W: u8 = 0x61;
const STX_DW: u8 = 0x7b;
const STX_W: u8 = 0x63;
const STX_B: u8 = 0x73;
const ST_DW: u8 = 0x7a;
const MOV_IMM: u8 = 0xb7;
const MOV_REG: u8 = 0xbf;
const AND_REG: u8 = 0x5f;
const ADD_IMM: u8 = 0x07;
const RSH_IMM: u8 = 0x77;
const JEQ_IMM: u8 = 0x15;
const JNE_REG: u8 = 0x5d;
const JLT_IMM: u8 = 0xa5;
const JGT_IMM: u8 = 0x25;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
const PSEUDO_KFUNC_CALL: u8 = 2;
const FP: u8 = 10;

impl Asm {
    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, label: usize) {
        self.fixups.push((self.insns.len(), label));
        self.emit(code, dst, src, 0, imm);
    }
    fn ld_imm64(&mut self, dst: u8, src: u8, value: u64) {
        self.emit(LD_IMM64, dst, src, 0, value as u32 as i32);
        self.emit(0, 0, 0, 0, (value >> 32) as u32 as i32);
    }
    fn finish(mut self) -> Option<Vec<Insn>> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels.get(label).copied().flatten()?;
            self.insns[at].off = i16::try_from(target as i64 - at as i64 - 1).ok()?;
        }
        Some(self.insns)
    }
}

/// Stack offset of path word `k` (14 words below the frame pointer).
fn slot(k: usize) -> i16 {
    -112 + 8 * k as i16
}

/// The program: copy `sun_path` to the stack, compare it with every allowed variant,
/// report the attempt (path and address length included), return the verdict.
fn program(k: &KernelBtf, variants: &[Variant], events_fd: RawFd) -> Option<Vec<Insn>> {
    let mut a = Asm::default();
    // r1 = ctx → r0 = struct bpf_sock_addr_kern *
    a.emit(CALL, 0, PSEUDO_KFUNC_CALL, 0, k.cast_to_kern_ctx as i32);
    a.emit(LDX_DW, 7, 0, k.uaddr_off as i16, 0);
    a.emit(LDX_W, 8, 0, k.uaddrlen_off as i16, 0);
    a.emit(MOV_REG, 1, 7, 0, 0);
    a.emit(MOV_IMM, 2, 0, 0, k.sockaddr_un as i32);
    a.emit(CALL, 0, PSEUDO_KFUNC_CALL, 0, k.rdonly_cast as i32);
    a.emit(MOV_REG, 9, 0, 0, 0);
    // sun_path[0..104] as 13 words, [104..108] as the low half of the 14th.
    for w in 0..13 {
        a.emit(LDX_DW, 1, 9, 2 + 8 * w as i16, 0);
        a.emit(STX_DW, FP, 1, slot(w), 0);
    }
    a.emit(LDX_W, 1, 9, 2 + 104, 0);
    a.emit(STX_DW, FP, 1, slot(13), 0);
    let (allow, report) = (a.label(), a.label());
    for v in variants {
        let next = a.label();
        a.jump(JLT_IMM, 8, 0, v.min_len as i32, next);
        a.jump(JGT_IMM, 8, 0, v.max_len as i32, next);
        for w in 0..14 {
            if v.masks[w] == 0 {
                continue;
            }
            a.emit(LDX_DW, 1, FP, slot(w), 0);
            a.ld_imm64(2, 0, v.masks[w]);
            a.emit(AND_REG, 1, 2, 0, 0);
            a.ld_imm64(2, 0, v.words[w]);
            a.jump(JNE_REG, 1, 2, 0, next);
        }
        a.jump(JA, 0, 0, 0, allow);
        a.bind(next);
    }
    a.emit(MOV_IMM, 7, 0, 0, 0);
    a.jump(JA, 0, 0, 0, report);
    a.bind(allow);
    a.emit(MOV_IMM, 7, 0, 0, 1);
    a.bind(report);
    // The report: a GuardEvent (ip_version 0 = Unix) followed by the path.
    let size = std::mem::size_of::<mirror_common::UnixGuardEvent>() as i32;
    let out = a.label();
    a.ld_imm64(1, PSEUDO_MAP_FD, events_fd as u32 as u64);
    a.emit(MOV_IMM, 2, 0, 0, size);
    a.emit(MOV_IMM, 3, 0, 0, 0);
    a.emit(CALL, 0, 0, 0, 131); // bpf_ringbuf_reserve
    a.jump(JEQ_IMM, 0, 0, 0, out);
    a.emit(MOV_REG, 6, 0, 0, 0);
    for off in (0..size as i16).step_by(8) {
        a.emit(ST_DW, 6, 0, off, 0);
    }
    a.emit(CALL, 0, 0, 0, 5); // bpf_ktime_get_ns
    a.emit(STX_DW, 6, 0, 0, 0);
    a.emit(CALL, 0, 0, 0, 14); // bpf_get_current_pid_tgid
    a.emit(RSH_IMM, 0, 0, 0, 32);
    a.emit(STX_W, 6, 0, 8, 0);
    a.emit(MOV_REG, 1, 6, 0, 0);
    a.emit(ADD_IMM, 1, 0, 0, 32);
    a.emit(MOV_IMM, 2, 0, 0, 16);
    a.emit(CALL, 0, 0, 0, 16); // bpf_get_current_comm
    // action: ALLOWED (0) when r7 == 1, else REFUSED (1).
    a.emit(MOV_IMM, 1, 0, 0, i32::from(guard_action::REFUSED));
    let refused = a.label();
    a.jump(JEQ_IMM, 7, 0, 0, refused);
    a.emit(MOV_IMM, 1, 0, 0, i32::from(guard_action::ALLOWED));
    a.bind(refused);
    a.emit(STX_B, 6, 1, 48, 0);
    let path_at = std::mem::size_of::<GuardEvent>() as i16;
    for w in 0..14 {
        a.emit(LDX_DW, 1, FP, slot(w), 0);
        a.emit(STX_DW, 6, 1, path_at + 8 * w as i16, 0);
    }
    a.emit(STX_W, 6, 8, path_at + 112, 0);
    a.emit(MOV_REG, 1, 6, 0, 0);
    a.emit(MOV_IMM, 2, 0, 0, 0);
    a.emit(CALL, 0, 0, 0, 132); // bpf_ringbuf_submit
    a.bind(out);
    a.emit(MOV_REG, 0, 7, 0, 0);
    a.emit(EXIT, 0, 0, 0, 0);
    a.finish()
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

fn put(attr: &mut [u8], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

fn load(insns: &[Insn], attach_type: u32) -> Result<OwnedFd, String> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes());
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    put(&mut attr, 48, b"mirror_unix\0");
    put(&mut attr, 68, &attach_type.to_ne_bytes());
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)])
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" | ");
        format!("{e}: {text}")
    })
}

fn link(prog: &OwnedFd, cgroup: RawFd, attach_type: u32) -> Result<OwnedFd, String> {
    let mut attr = [0u8; 64];
    put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
    put(&mut attr, 4, &(cgroup as u32).to_ne_bytes());
    put(&mut attr, 8, &attach_type.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| e.to_string())
}

/// The attached hooks; detached when dropped (links closed).
#[derive(Debug)]
pub struct UnixFence {
    _links: Vec<OwnedFd>,
    _progs: Vec<OwnedFd>,
}

/// Loads and attaches the hooks on `cgroup` for `allow` (each path, or `@name` for an
/// abstract socket), reporting into the guard's ring buffer `events_fd`.
pub fn attach(cgroup: RawFd, allow: &[PathBuf], events_fd: RawFd) -> Result<UnixFence, String> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| format!("kernel BTF: {e}"))?;
    let k = read_btf(&btf).ok_or(
        "this kernel has no cgroup Unix-socket hooks (Linux >= 6.7) or lacks the kfuncs they need",
    )?;
    let mut all = Vec::new();
    for p in allow {
        all.extend(variants(p).ok_or_else(|| {
            format!(
                "--allow-unix {}: empty or longer than {UNIX_PATH_BYTES} bytes",
                p.display()
            )
        })?);
    }
    let insns = program(&k, &all, events_fd).ok_or("assembling the Unix-socket program")?;
    let mut progs = Vec::new();
    let mut links = Vec::new();
    for attach_type in [k.unix_connect, k.unix_sendmsg] {
        let prog =
            load(&insns, attach_type).map_err(|e| format!("loading the Unix-socket hook: {e}"))?;
        links.push(
            link(&prog, cgroup, attach_type)
                .map_err(|e| format!("attaching the Unix-socket hook: {e}"))?,
        );
        progs.push(prog);
    }
    Ok(UnixFence {
        _links: links,
        _progs: progs,
    })
}

/// The path of a reported Unix-socket attempt, as a user writes it (`@name` for an
/// abstract socket), from the raw `sun_path` and the address length.
pub fn path_of(raw: &[u8], addr_len: u32) -> String {
    let n = (addr_len.saturating_sub(FAMILY_BYTES) as usize).min(raw.len());
    let bytes = &raw[..n];
    match bytes.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => {
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the program decides, evaluated on the host for the same variants.
    fn allowed(vs: &[Variant], sun_path: &[u8], addr_len: u32) -> bool {
        let mut raw = [0xAAu8; 112];
        raw[..sun_path.len()].copy_from_slice(sun_path);
        raw[108..].fill(0);
        vs.iter().any(|v| {
            (v.min_len..=v.max_len).contains(&addr_len)
                && (0..14).all(|k| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&raw[8 * k..8 * k + 8]);
                    u64::from_le_bytes(w) & v.masks[k] == v.words[k] & v.masks[k]
                })
        })
    }

    #[test]
    fn a_path_matches_in_the_forms_programs_use_and_nothing_else() {
        let vs = variants(Path::new("/run/db.sock")).unwrap();
        let p = b"/run/db.sock";
        let n = p.len() as u32;
        assert!(allowed(&vs, p, 2 + n), "exact length, no NUL");
        let mut with_nul = p.to_vec();
        with_nul.push(0);
        assert!(allowed(&vs, &with_nul, 2 + n + 1), "with its NUL");
        let mut full = [0u8; 108];
        full[..p.len()].copy_from_slice(p);
        assert!(allowed(&vs, &full, 110), "sizeof(struct sockaddr_un)");
        assert!(!allowed(&vs, b"/run/db.sockX", 2 + n + 1), "a longer name");
        assert!(!allowed(&vs, b"/run/db.soc", 2 + n - 1), "a prefix");
        assert!(!allowed(&vs, b"/run/dB.sock", 2 + n), "one byte off");
        // Bytes beyond the address length are garbage and must not let a prefix in.
        assert!(!allowed(&vs, b"/run/db.sock", 2 + n - 2));
    }

    #[test]
    fn abstract_names_and_bad_paths() {
        let vs = variants(Path::new("@bus")).unwrap();
        assert_eq!(vs.len(), 1);
        assert!(allowed(&vs, b"\0bus", 2 + 4));
        assert!(!allowed(&vs, b"bus\0", 2 + 4));
        assert!(variants(Path::new("")).is_none());
        assert!(variants(Path::new(&"x".repeat(109))).is_none());
        assert_eq!(path_of(b"\0bus\0\0", 6), "@bus");
        assert_eq!(path_of(b"/run/a\0garbage", 110), "/run/a");
        assert_eq!(path_of(b"/run/ab", 2 + 6), "/run/a");
    }

    #[test]
    fn the_program_assembles_with_resolved_jumps() {
        let k = KernelBtf {
            cast_to_kern_ctx: 1,
            rdonly_cast: 2,
            sockaddr_un: 3,
            unix_connect: 49,
            unix_sendmsg: 50,
            uaddr_off: 8,
            uaddrlen_off: 32,
        };
        let vs = variants(Path::new("/run/db.sock")).unwrap();
        let p = program(&k, &vs, 3).unwrap();
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        assert!(p.len() < 4096);
    }

    #[test]
    fn reads_this_kernels_btf_when_it_has_the_hooks() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        if let Some(k) = read_btf(&data) {
            assert!(k.unix_sendmsg == k.unix_connect + 1, "{k:?}");
            assert!(k.uaddrlen_off > k.uaddr_off, "{k:?}");
        }
    }
}

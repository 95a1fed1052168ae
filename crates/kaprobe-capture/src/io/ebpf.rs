//! Per-flow state in the kernel: an eBPF socket filter that withholds the packets the
//! tracker would only count.
//!
//! On a busy link most packets change nothing the analysis reports: an in-order data
//! segment or a plain ACK in a flow with no probe pending, no reuse after idle open and no
//! ending under way moves the flow's sequence numbers, ACK, window, TTL and clock forward,
//! and that is all. The program here runs the classic filter of [`crate::io::bpf`]
//! (translated instruction by instruction), then keeps a record per flow in a hash map: a
//! *mirror* of that part of the tracker's state, updated from every packet by the tracker's
//! own rules, and whether each packet is *routine*. A packet is not routine when it is:
//!
//! - SYN, FIN or RST, or carries no ACK;
//! - 0 or 1 byte whose sequence number is one below the peer's ACK (a keep-alive), or one
//!   byte at it into a zero window, or any such segment before the peer's ACK is known;
//! - data after at least [`REUSE_GAP`] (less a margin) without data: a reuse after idle;
//! - any packet after a second of silence in the flow.
//!
//! IPv6 extension headers, cut or malformed headers: passed without a look.
//!
//! User space *arms* a flow when its state is quiet (nothing under way that a routine
//! packet could change) by a request in a second map: the first packet's fingerprint (so a
//! record of another lifetime of the 4-tuple never takes it) and how many packets it has
//! processed. The kernel takes the request at the next routine packet when that count
//! covers every packet it passed that was not routine: the packets still in the ring are
//! routine and leave the flow quiet. It says so through a ring buffer of arming events (the
//! key, the first packet, the count it armed at; no room for the event, no arming), so that
//! user space reads a record only when it must. From then on it drops routine packets from
//! the socket, counting them and mirroring their effect, until a packet that is not
//! routine: that one is passed, and the mirror as the withheld packets left it is frozen in
//! the record. User space reads the record ([`KernelFlows::read`]) before processing that
//! packet (the one after the count the record was armed at) and takes the frozen state in
//! as if it had seen every withheld packet; before a flow's summary, expiry or eviction it
//! takes in what is being withheld at the moment.
//!
//! Needs CAP_BPF (root); where the kernel refuses, the live source falls back on the classic
//! filter and user space sees every packet, as before.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::flow::ending::REUSE_GAP;
use crate::io::bpf::{op as cop, Framing, Insn};

/// Flows the kernel keeps a record for (more are passed whole, as without it).
pub const MAX_KERNEL_FLOWS: u32 = 262_144;

// eBPF encoding (linux/bpf.h, bpf_common.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const H: u8 = 0x08;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const ABS: u8 = 0x20;
const IND: u8 = 0x40;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const OR: u8 = 0x40;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const RSH: u8 = 0x70;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JSET: u8 = 0x40;
const JNE: u8 = 0x50;
const JLT: u8 = 0xa0;
const JSGE: u8 = 0x70;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;

const FN_MAP_LOOKUP: i32 = 1;
const FN_MAP_UPDATE: i32 = 2;
const FN_MAP_DELETE: i32 = 3;
const FN_KTIME_GET_NS: i32 = 5;
const FN_RINGBUF_OUTPUT: i32 = 130;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ins {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// A jump target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct L(usize);

/// eBPF instructions with symbolic jump targets.
#[derive(Default)]
struct Asm {
    ins: Vec<Ins>,
    /// (instruction index, target) of every jump, patched by `finish`.
    jumps: Vec<(usize, L)>,
    marks: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> L {
        self.marks.push(None);
        L(self.marks.len() - 1)
    }
    fn mark(&mut self, l: L) {
        self.marks[l.0] = Some(self.ins.len());
    }
    fn raw(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.ins.push(Ins {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        });
    }
    fn mov64(&mut self, dst: u8, src: u8) {
        self.raw(ALU64 | MOV | X, dst, src, 0, 0);
    }
    fn mov64_imm(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64 | MOV, dst, 0, 0, imm);
    }
    fn alu32_imm(&mut self, op: u8, dst: u8, imm: i32) {
        self.raw(ALU | op, dst, 0, 0, imm);
    }
    fn alu32(&mut self, op: u8, dst: u8, src: u8) {
        self.raw(ALU | op | X, dst, src, 0, 0);
    }
    fn add64_imm(&mut self, dst: u8, imm: i32) {
        self.raw(ALU64 | ADD, dst, 0, 0, imm);
    }
    fn sub64(&mut self, dst: u8, src: u8) {
        self.raw(ALU64 | SUB | X, dst, src, 0, 0);
    }
    fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) {
        self.raw(LDX | MEM | size, dst, src, off, 0);
    }
    fn stx(&mut self, size: u8, dst: u8, off: i16, src: u8) {
        self.raw(STX | MEM | size, dst, src, off, 0);
    }
    fn st(&mut self, size: u8, dst: u8, off: i16, imm: i32) {
        self.raw(ST | MEM | size, dst, 0, off, imm);
    }
    /// r0 = packet bytes at `k` (network order, as a number); r1-r5 are clobbered.
    fn ld_abs(&mut self, size: u8, k: i32) {
        self.raw(LD | ABS | size, 0, 0, 0, k);
    }
    /// r0 = packet bytes at `src + k`.
    fn ld_ind(&mut self, size: u8, src: u8, k: i32) {
        self.raw(LD | IND | size, 0, src, 0, k);
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: L) {
        self.jumps.push((self.ins.len(), to));
        self.raw(code, dst, src, 0, imm);
    }
    fn ja(&mut self, to: L) {
        self.jump(JMP | JA, 0, 0, 0, to);
    }
    /// 32-bit compare of `dst` with a constant.
    fn j32(&mut self, op: u8, dst: u8, imm: i32, to: L) {
        self.jump(JMP32 | op, dst, 0, imm, to);
    }
    /// 32-bit compare of `dst` with `src`.
    fn j32x(&mut self, op: u8, dst: u8, src: u8, to: L) {
        self.jump(JMP32 | op | X, dst, src, 0, to);
    }
    /// 64-bit compare of `dst` with a constant.
    fn j64(&mut self, op: u8, dst: u8, imm: i32, to: L) {
        self.jump(JMP | op, dst, 0, imm, to);
    }
    fn call(&mut self, f: i32) {
        self.raw(JMP | CALL, 0, 0, 0, f);
    }
    fn exit(&mut self) {
        self.raw(JMP | EXIT, 0, 0, 0, 0);
    }
    /// `dst` = the map with descriptor `fd` (a two-slot instruction).
    fn ld_map(&mut self, dst: u8, fd: i32) {
        self.raw(LD | DW, dst, 1, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }
    /// `dst` = the frame pointer plus `off`.
    fn stack_ptr(&mut self, dst: u8, off: i16) {
        self.mov64(dst, 10);
        self.add64_imm(dst, i32::from(off));
    }
    /// Resolve the jumps, leaving out what no path reaches (the verifier refuses dead code,
    /// and a classic program may hold some).
    fn finish(self) -> Result<Vec<Ins>, &'static str> {
        let n = self.ins.len();
        let mut target = vec![None; n];
        for &(at, to) in &self.jumps {
            target[at] = Some(self.marks[to.0].ok_or("a jump to an unplaced label")?);
        }
        let mut live = vec![false; n];
        let mut todo = vec![0usize];
        while let Some(i) = todo.pop() {
            if i >= n || live[i] {
                continue;
            }
            live[i] = true;
            let code = self.ins[i].code;
            if code == LD | DW {
                // the second half of a 64-bit load
                if i + 1 < n {
                    live[i + 1] = true;
                }
                todo.push(i + 2);
                continue;
            }
            if let Some(t) = target[i] {
                todo.push(t);
                if code == JMP | JA {
                    continue;
                }
            }
            if code != JMP | EXIT {
                todo.push(i + 1);
            }
        }
        // New positions: old index -> index among the live ones.
        let mut at = vec![0usize; n + 1];
        let mut k = 0;
        for i in 0..n {
            at[i] = k;
            k += usize::from(live[i]);
        }
        at[n] = k;
        let mut out = Vec::with_capacity(k);
        for i in 0..n {
            if !live[i] {
                continue;
            }
            let mut ins = self.ins[i];
            if let Some(t) = target[i] {
                let rel = i64::try_from(at[t]).unwrap_or(0) - i64::try_from(at[i]).unwrap_or(0) - 1;
                ins.off = i16::try_from(rel).map_err(|_| "a jump too long for eBPF")?;
            }
            out.push(ins);
        }
        Ok(out)
    }
}

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
/// The packet context (LD_ABS/LD_IND read through it).
const CTX: u8 = 6;
/// The classic X register, then the IP header's offset.
const RX: u8 = 7;
/// Scratch in the classic part, then the TCP header's offset, then the flow record.
const R8: u8 = 8;
/// The snap length the classic part accepted with.
const SNAP: u8 = 9;
const FP: u8 = 10;

// Stack slots (offsets from the frame pointer).
/// Classic scratch memory M[0..16].
const MEM_AT: i16 = -64;
const KEY: i16 = -104;
const SEQ: i16 = -108;
const ACK: i16 = -112;
/// Window | flags << 16.
const MISC: i16 = -116;
const LEN: i16 = -120;
const TTL: i16 = -124;
const DIR: i16 = -128;
const NOW: i16 = -136;
const SPORT: i16 = -140;
const DPORT: i16 = -144;
/// 1 when the packet is routine (see [`routine`]).
const ROUTINE: i16 = -148;
/// What a pure ACK of 0 or 1 byte is (see [`classify`]): [`NOT_PROBE`], [`IS_PROBE`] or
/// [`PEER_ACK_UNKNOWN`].
const PROBE: i16 = -152;
/// The TCP flags byte.
const FLAGS: i16 = -156;
const INIT: i16 = -304;
const _: () = assert!(INIT + RECORD_SIZE as i16 <= FLAGS);
/// An arming event: the key (at [`KEY`]), then the count armed at and the first packet's
/// fingerprint, over the classic scratch memory (unused by then).
const EVENT: i16 = KEY;
const E_ARMED_AT: i16 = 40;
const E_FIRST: i16 = 44;
const EVENT_SIZE: i16 = 56;

// The flow record (map value): counters, the arming protocol, the first packet's
// fingerprint, the live mirror of the tracker's per-flow state and a frozen copy of it.
const V_SKIPPED: i16 = 0;
const V_SEEN: i16 = 8;
const V_SKIP_NS: i16 = 16;
const V_ARMED: i16 = 24;
/// Packets passed since the record was made.
const V_PASSED: i16 = 28;
/// `V_PASSED`'s value at the latest passed packet that was not routine.
const V_NR_IDX: i16 = 32;
/// The first packet's fingerprint: sequence, ACK, window | flags << 16.
const V_FP: i16 = 36;
/// The mirror, kept from every packet.
const V_LIVE: i16 = 48;
/// The mirror as it stood after the last withheld packet, frozen when a packet ends the
/// withholding; with the withheld count and time at that moment.
const V_FOLD: i16 = 88;
const V_FOLD_SKIPPED: i16 = 128;
const V_FOLD_LAST: i16 = 136;
const RECORD_SIZE: u32 = 144;
// The mirror's fields.
const M_KNOWN: i16 = 0;
const M_NEXT: i16 = 4;
const M_ACK: i16 = 12;
const M_WIN: i16 = 20;
const M_TTL: i16 = 24;
const M_LAST_PAYLOAD: i16 = 32;
const MIRROR_SIZE: i16 = 40;
// An arm request: the first packet's fingerprint and the packets user space processed.
const A_COUNT: i16 = 12;
const ARM_SIZE: u32 = 16;
const KEY_SIZE: u32 = 40;

/// `known` bits, per key side `k` (0: the lower endpoint).
const fn next_known(k: usize) -> u32 {
    1 << (4 * k)
}
const fn ack_known(k: usize) -> u32 {
    2 << (4 * k)
}
const fn win_known(k: usize) -> u32 {
    4 << (4 * k)
}
const fn ttl_known(k: usize) -> u32 {
    8 << (4 * k)
}
const LAST_PAYLOAD_KNOWN: u32 = 1 << 8;

/// Data sooner than this after the flow's previous data is not a reuse: [`REUSE_GAP`] less
/// a margin for the two clocks (the kernel's at filtering, the ring's timestamp).
fn reuse_ns() -> i32 {
    let margin = Duration::from_millis(20);
    i32::try_from(REUSE_GAP.saturating_sub(margin).as_nanos()).unwrap_or(i32::MAX)
}

/// Emit the classic program `prog` as eBPF: its drops return 0, its accepts go to `accept`
/// with the snap length in [`SNAP`].
fn translate(a: &mut Asm, prog: &[Insn], accept: L) {
    let at: Vec<L> = (0..=prog.len()).map(|_| a.label()).collect();
    let drop = a.label();
    for (i, ins) in prog.iter().enumerate() {
        a.mark(at[i]);
        let k = ins.k as i32;
        let next = |n: u8| at[(i + 1 + usize::from(n)).min(prog.len())];
        match ins.code {
            cop::LD_IMM => a.raw(ALU | MOV, R0, 0, 0, k),
            cop::LD_W_LEN => a.ldx(W, R0, CTX, 0),
            cop::LD_W_ABS => a.ld_abs(W, k),
            cop::LD_H_ABS => a.ld_abs(H, k),
            cop::LD_B_ABS => a.ld_abs(B, k),
            cop::LD_W_IND => a.ld_ind(W, RX, k),
            cop::LD_H_IND => a.ld_ind(H, RX, k),
            cop::LD_B_IND => a.ld_ind(B, RX, k),
            cop::LDX_B_MSH => {
                a.mov64(R8, R0);
                a.ld_abs(B, k);
                a.alu32_imm(AND, R0, 0xf);
                a.alu32_imm(LSH, R0, 2);
                a.raw(ALU | MOV | X, RX, R0, 0, 0);
                a.mov64(R0, R8);
            }
            cop::LDX_MEM | cop::ST if ins.k >= 16 => a.ja(drop),
            cop::LDX_MEM => a.ldx(W, RX, FP, MEM_AT + 4 * (k as i16)),
            cop::ST => a.stx(W, FP, MEM_AT + 4 * (k as i16), R0),
            cop::TAX => a.raw(ALU | MOV | X, RX, R0, 0, 0),
            code if code & 0x07 == cop::ALU_K => {
                let op = (code & 0xf0) as u8;
                let by_x = code & cop::SRC_X != 0;
                match op {
                    // division or remainder by zero ends the program (drop)
                    0x30 | 0x90 if by_x => {
                        a.j32(JEQ, RX, 0, drop);
                        a.alu32(op, R0, RX);
                    }
                    0x30 | 0x90 if ins.k == 0 => a.ja(drop),
                    // a shift by 32 or more leaves nothing
                    0x60 | 0x70 if by_x => {
                        let big = a.label();
                        let done = a.label();
                        a.j32(JGE, RX, 32, big);
                        a.alu32(op, R0, RX);
                        a.ja(done);
                        a.mark(big);
                        a.raw(ALU | MOV, R0, 0, 0, 0);
                        a.mark(done);
                    }
                    0x60 | 0x70 if ins.k >= 32 => a.raw(ALU | MOV, R0, 0, 0, 0),
                    0x00 | 0x10 | 0x20 | 0x30 | 0x40 | 0x50 | 0x60 | 0x70 | 0x90 | 0xa0 => {
                        if by_x {
                            a.alu32(op, R0, RX);
                        } else {
                            a.alu32_imm(op, R0, k);
                        }
                    }
                    _ => a.ja(drop),
                }
            }
            code if code & 0x07 == cop::JMP => {
                let op = (code & 0xf0) as u8;
                let by_x = code & cop::SRC_X != 0;
                if op == 0x00 {
                    a.ja(at[(i + 1).saturating_add(ins.k as usize).min(prog.len())]);
                    continue;
                }
                let ebpf_op = match op {
                    0x10 => JEQ,
                    0x20 => JGT,
                    0x30 => JGE,
                    0x40 => JSET,
                    _ => {
                        a.ja(drop);
                        continue;
                    }
                };
                let (t, f) = (next(ins.jt), next(ins.jf));
                if by_x {
                    a.j32x(ebpf_op, R0, RX, t);
                } else {
                    a.j32(ebpf_op, R0, k, t);
                }
                if ins.jf != 0 {
                    a.ja(f);
                }
            }
            cop::RET_K if ins.k == 0 => a.ja(drop),
            cop::RET_K => {
                a.raw(ALU | MOV, SNAP, 0, 0, k);
                a.ja(accept);
            }
            _ => a.ja(drop),
        }
    }
    // Falling off the end drops, as in the kernel.
    a.mark(at[prog.len()]);
    a.mark(drop);
    a.mov64_imm(R0, 0);
    a.exit();
}

/// On to `short` unless the packet holds `n` bytes from the offset in `reg`.
fn need(a: &mut Asm, reg: u8, n: i32, short: L) {
    a.ldx(W, R1, CTX, 0);
    a.mov64(R2, reg);
    a.add64_imm(R2, n);
    a.jump(JMP | JGT | X, R2, R1, 0, short);
}

fn live(f: i16) -> i16 {
    V_LIVE + f
}

/// On to `yes` when the 0- or 1-byte segment in the stack slots is a probe by its sequence
/// number, judged by the peer's (key side `peer`) ACK and window in the live mirror, as the
/// tracker judges it: one below the peer's ACK, or one byte at it into a zero window. On to
/// `unknown` when the peer's ACK is not known yet, else to `no`.
fn probe_by_seq(a: &mut Asm, peer: usize, yes: L, unknown: L, no: L) {
    let p = peer as i16;
    let known = a.label();
    a.ldx(W, R3, R8, live(M_KNOWN));
    a.j32(JSET, R3, ack_known(peer) as i32, known);
    a.ja(unknown);
    a.mark(known);
    a.ldx(W, R4, R8, live(M_ACK) + 4 * p);
    a.ldx(W, R5, FP, SEQ);
    a.alu32_imm(ADD, R5, 1);
    a.j32x(JEQ, R5, R4, yes);
    a.ldx(W, R1, FP, LEN);
    a.j32(JNE, R1, 1, no);
    a.ldx(W, R5, FP, SEQ);
    a.j32x(JNE, R5, R4, no);
    let win = a.label();
    a.j32(JSET, R3, win_known(peer) as i32, win);
    a.ja(no);
    a.mark(win);
    a.ldx(H, R4, R8, live(M_WIN) + 2 * p);
    a.j32(JEQ, R4, 0, yes);
    a.ja(no);
}

const NOT_PROBE: i32 = 0;
const IS_PROBE: i32 = 1;
const PEER_ACK_UNKNOWN: i32 = 2;

/// Set the PROBE slot for the packet from key side `s`, before the mirror takes it in.
fn classify(a: &mut Asm, s: usize) {
    let (pure_ack, is_probe, unknown, done) = (a.label(), a.label(), a.label(), a.label());
    a.st(W, FP, PROBE, NOT_PROBE);
    a.ldx(W, R1, FP, FLAGS);
    a.j32(JSET, R1, 0x07, done); // FIN, SYN, RST
    a.j32(JSET, R1, 0x10, pure_ack);
    a.ja(done);
    a.mark(pure_ack);
    a.ldx(W, R1, FP, LEN);
    a.j32(JGT, R1, 1, done);
    probe_by_seq(a, 1 - s, is_probe, unknown, done);
    a.mark(is_probe);
    a.st(W, FP, PROBE, IS_PROBE);
    a.ja(done);
    a.mark(unknown);
    a.st(W, FP, PROBE, PEER_ACK_UNKNOWN);
    a.mark(done);
}

/// Set the ROUTINE slot: 1 when the packet (classified) changes nothing but the mirror and
/// the counters of a flow with nothing under way (see the module's list).
fn routine(a: &mut Asm) {
    let (no, payload, yes, ack_ok, gap) = (a.label(), a.label(), a.label(), a.label(), a.label());
    a.st(W, FP, ROUTINE, 0);
    a.ldx(W, R1, FP, FLAGS);
    a.j32(JSET, R1, 0x07, no); // FIN, SYN, RST
    a.j32(JSET, R1, 0x10, ack_ok);
    a.ja(no);
    a.mark(ack_ok);
    a.ldx(DW, R1, FP, NOW);
    a.ldx(DW, R2, R8, V_SEEN);
    a.sub64(R1, R2);
    a.j64(JGE, R1, 1_000_000_000, no);
    a.ldx(W, R1, FP, LEN);
    a.j32(JGE, R1, 2, payload);
    // 0 or 1 byte: neither a probe nor perhaps one.
    a.ldx(W, R2, FP, PROBE);
    a.j32(JNE, R2, NOT_PROBE, no);
    a.j32(JEQ, R1, 0, yes);
    // Data: not a reuse after idle.
    a.mark(payload);
    a.ldx(W, R3, R8, live(M_KNOWN));
    a.j32(JSET, R3, LAST_PAYLOAD_KNOWN as i32, gap);
    a.ja(yes);
    a.mark(gap);
    a.ldx(DW, R1, FP, NOW);
    a.ldx(DW, R2, R8, live(M_LAST_PAYLOAD));
    a.sub64(R1, R2);
    a.j64(JGE, R1, reuse_ns(), no);
    a.mark(yes);
    a.st(W, FP, ROUTINE, 1);
    a.mark(no);
}

/// `live(field)` = the value in r1 unless the field (known by `bit`) is not behind it in
/// wrapping order (`old.diff(new) >= 0` keeps the old one, as `SeqNum::max`).
fn highest(a: &mut Asm, field: i16, bit: u32) {
    let (have, set, done) = (a.label(), a.label(), a.label());
    a.ldx(W, R3, R8, live(M_KNOWN));
    a.j32(JSET, R3, bit as i32, have);
    a.ja(set);
    a.mark(have);
    a.ldx(W, R4, R8, live(field));
    a.raw(ALU | MOV | X, R5, R4, 0, 0);
    a.alu32(SUB, R5, R1);
    a.j32(JSGE, R5, 0, done);
    a.mark(set);
    a.stx(W, R8, live(field), R1);
    a.alu32_imm(OR, R3, bit as i32);
    a.stx(W, R8, live(M_KNOWN), R3);
    a.mark(done);
}

/// Update the live mirror with the packet from key side `s` (classified by [`classify`]),
/// as the tracker updates its state from any packet: the sequence end (one past a probe's
/// sequence number, else past its data, SYN and FIN) and the ACK at their highest in
/// wrapping order; unless it is a RST, the window, the TTL and, for data that is not a
/// probe, the time of the last payload.
fn mirror_packet(a: &mut Asm, s: usize) {
    let o = s as i16;
    // The sequence end.
    let (end_done, probe_end) = (a.label(), a.label());
    a.ldx(W, R1, FP, SEQ);
    a.ldx(W, R2, FP, PROBE);
    a.j32(JEQ, R2, IS_PROBE, probe_end);
    a.ldx(W, R2, FP, LEN);
    a.alu32(ADD, R1, R2);
    a.ldx(W, R2, FP, FLAGS);
    a.mov64(R3, R2);
    a.alu32_imm(AND, R3, 1); // FIN
    a.alu32(ADD, R1, R3);
    a.alu32_imm(RSH, R2, 1);
    a.alu32_imm(AND, R2, 1); // SYN
    a.alu32(ADD, R1, R2);
    a.ja(end_done);
    a.mark(probe_end);
    a.alu32_imm(ADD, R1, 1);
    a.mark(end_done);
    highest(a, M_NEXT + 4 * o, next_known(s));

    // The ACK, when the segment carries one.
    let (ack, no_ack) = (a.label(), a.label());
    a.ldx(W, R2, FP, FLAGS);
    a.j32(JSET, R2, 0x10, ack);
    a.ja(no_ack);
    a.mark(ack);
    a.ldx(W, R1, FP, ACK);
    highest(a, M_ACK + 4 * o, ack_known(s));
    a.mark(no_ack);

    // Window, TTL and the last payload: not from a RST.
    let done = a.label();
    a.ldx(W, R2, FP, FLAGS);
    a.j32(JSET, R2, 0x04, done);
    a.ldx(W, R1, FP, MISC);
    a.stx(H, R8, live(M_WIN) + 2 * o, R1);
    a.ldx(W, R1, FP, TTL);
    a.stx(B, R8, live(M_TTL) + o, R1);
    a.ldx(W, R3, R8, live(M_KNOWN));
    a.alu32_imm(OR, R3, (win_known(s) | ttl_known(s)) as i32);
    a.stx(W, R8, live(M_KNOWN), R3);
    a.ldx(W, R1, FP, LEN);
    a.j32(JEQ, R1, 0, done);
    a.ldx(W, R1, FP, PROBE);
    a.j32(JEQ, R1, IS_PROBE, done);
    a.ldx(DW, R1, FP, NOW);
    a.stx(DW, R8, live(M_LAST_PAYLOAD), R1);
    a.alu32_imm(OR, R3, LAST_PAYLOAD_KNOWN as i32);
    a.stx(W, R8, live(M_KNOWN), R3);
    a.mark(done);
}

/// Emit `f(0)` or `f(1)` by the packet's key side (the DIR slot), then go on to `then`.
fn by_side(a: &mut Asm, f: fn(&mut Asm, usize), then: L) {
    let one = a.label();
    a.ldx(W, R2, FP, DIR);
    a.j32(JNE, R2, 0, one);
    f(a, 0);
    a.ja(then);
    a.mark(one);
    f(a, 1);
    a.ja(then);
}

/// The whole program: the classic filter `classic`, then the per-flow part over the maps
/// `state_fd` (records) and `arm_fd` (requests).
///
/// # Errors
/// When a jump does not fit (the classic program is at most 4096 instructions, far below).
pub fn program(
    framing: Framing,
    classic: &[Insn],
    state_fd: i32,
    arm_fd: i32,
    events_fd: i32,
) -> Result<Vec<Ins>, &'static str> {
    let mut a = Asm::default();
    a.mov64(CTX, R1);
    a.mov64_imm(R0, 0);
    a.mov64_imm(RX, 0);
    for m in 0..16 {
        a.st(W, FP, MEM_AT + 4 * m, 0);
    }
    let stateful = a.label();
    translate(&mut a, classic, stateful);

    let pass = a.label();
    a.mark(stateful);
    // Where the IP header is.
    let ip = a.label();
    match framing {
        Framing::Ethernet => {
            let vlan = a.label();
            a.mov64_imm(RX, 14);
            a.ld_abs(H, 12);
            for t in [0x8100, 0x88a8, 0x9100] {
                a.j32(JEQ, R0, t, vlan);
            }
            a.ja(ip);
            a.mark(vlan);
            a.mov64_imm(RX, 18);
        }
        Framing::Ip => a.mov64_imm(RX, 0),
    }
    a.mark(ip);
    let (v4, v6, tcp) = (a.label(), a.label(), a.label());
    // Every load below stays inside the packet (an out-of-bounds load would end the program
    // with a drop): a cut packet is passed, for user space to count.
    need(&mut a, RX, 20, pass);
    a.ld_ind(B, RX, 0);
    a.alu32_imm(RSH, R0, 4);
    a.j32(JEQ, R0, 4, v4);
    a.j32(JEQ, R0, 6, v6);
    a.ja(pass);

    a.mark(v4);
    a.ld_ind(B, RX, 0);
    a.alu32_imm(AND, R0, 0xf);
    a.alu32_imm(LSH, R0, 2);
    a.mov64(R8, RX);
    a.raw(ALU64 | ADD | X, R8, R0, 0, 0);
    a.stx(W, FP, LEN, R0);
    a.ld_ind(H, RX, 2);
    a.ldx(W, R1, FP, LEN);
    a.j32x(JGT, R1, R0, pass);
    a.alu32(SUB, R0, R1);
    a.stx(W, FP, LEN, R0);
    a.ld_ind(B, RX, 8);
    a.stx(W, FP, TTL, R0);
    a.ld_ind(W, RX, 12);
    a.stx(W, FP, KEY, R0);
    a.ld_ind(W, RX, 16);
    a.stx(W, FP, KEY + 16, R0);
    for w in [4, 8, 12, 20, 24, 28] {
        a.st(W, FP, KEY + w, 0);
    }
    a.st(W, FP, KEY + 36, 4);
    a.ja(tcp);

    a.mark(v6);
    need(&mut a, RX, 40, pass);
    a.ld_ind(B, RX, 6);
    a.j32(JNE, R0, 6, pass);
    a.ld_ind(H, RX, 4);
    a.j32(JEQ, R0, 0, pass);
    a.stx(W, FP, LEN, R0);
    a.ld_ind(B, RX, 7);
    a.stx(W, FP, TTL, R0);
    for w in 0..4i16 {
        a.ld_ind(W, RX, 8 + 4 * i32::from(w));
        a.stx(W, FP, KEY + 4 * w, R0);
        a.ld_ind(W, RX, 24 + 4 * i32::from(w));
        a.stx(W, FP, KEY + 16 + 4 * w, R0);
    }
    a.st(W, FP, KEY + 36, 6);
    a.mov64(R8, RX);
    a.add64_imm(R8, 40);

    a.mark(tcp);
    need(&mut a, R8, 20, pass);
    a.ld_ind(H, R8, 0);
    a.stx(W, FP, SPORT, R0);
    a.ld_ind(H, R8, 2);
    a.stx(W, FP, DPORT, R0);
    a.ld_ind(W, R8, 4);
    a.stx(W, FP, SEQ, R0);
    a.ld_ind(W, R8, 8);
    a.stx(W, FP, ACK, R0);
    a.ld_ind(B, R8, 12);
    a.alu32_imm(RSH, R0, 4);
    a.alu32_imm(LSH, R0, 2);
    a.ldx(W, R1, FP, LEN);
    a.j32x(JGT, R0, R1, pass);
    a.alu32(SUB, R1, R0);
    a.stx(W, FP, LEN, R1);
    a.ld_ind(B, R8, 13);
    a.stx(W, FP, FLAGS, R0);
    a.alu32_imm(LSH, R0, 16);
    a.stx(W, FP, MISC, R0);
    a.ld_ind(H, R8, 14);
    a.ldx(W, R1, FP, MISC);
    a.alu32(OR, R0, R1);
    a.stx(W, FP, MISC, R0);

    // The key: the lower endpoint (address words, then port) first, as `FlowKey` sorts.
    let (src_lo, dst_lo, keyed) = (a.label(), a.label(), a.label());
    for w in 0..4i16 {
        a.ldx(W, R1, FP, KEY + 4 * w);
        a.ldx(W, R2, FP, KEY + 16 + 4 * w);
        a.j32x(JLT, R1, R2, src_lo);
        a.j32x(JGT, R1, R2, dst_lo);
    }
    a.ldx(W, R1, FP, SPORT);
    a.ldx(W, R2, FP, DPORT);
    a.j32x(JGT, R1, R2, dst_lo);
    // `lo port << 16 | hi port`, and the packet's side (0: from the lower endpoint).
    let key_ports = |a: &mut Asm, lo: i16, hi: i16, side: i32| {
        a.ldx(W, R1, FP, lo);
        a.alu32_imm(LSH, R1, 16);
        a.ldx(W, R2, FP, hi);
        a.alu32(OR, R1, R2);
        a.stx(W, FP, KEY + 32, R1);
        a.st(W, FP, DIR, side);
    };
    a.mark(src_lo);
    key_ports(&mut a, SPORT, DPORT, 0);
    a.ja(keyed);
    a.mark(dst_lo);
    for w in 0..4i16 {
        a.ldx(W, R1, FP, KEY + 4 * w);
        a.ldx(W, R2, FP, KEY + 16 + 4 * w);
        a.stx(W, FP, KEY + 4 * w, R2);
        a.stx(W, FP, KEY + 16 + 4 * w, R1);
    }
    key_ports(&mut a, DPORT, SPORT, 1);
    a.mark(keyed);

    a.call(FN_KTIME_GET_NS);
    a.stx(DW, FP, NOW, R0);
    a.ld_map(R1, state_fd);
    a.stack_ptr(R2, KEY);
    a.call(FN_MAP_LOOKUP);
    let (found, pass_path, withhold, not_armed) = (a.label(), a.label(), a.label(), a.label());
    a.j64(JNE, R0, 0, found);
    // A new flow: a record with this packet's fingerprint; the packet is passed (not
    // routine: user space has not seen the flow yet).
    for i in 0..(RECORD_SIZE as i16 / 8) {
        a.st(DW, FP, INIT + 8 * i, 0);
    }
    for (i, from) in [SEQ, ACK, MISC].into_iter().enumerate() {
        a.ldx(W, R1, FP, from);
        a.stx(W, FP, INIT + V_FP + 4 * i as i16, R1);
    }
    a.ld_map(R1, state_fd);
    a.stack_ptr(R2, KEY);
    a.stack_ptr(R3, INIT);
    a.mov64_imm(R4, 1); // BPF_NOEXIST
    a.call(FN_MAP_UPDATE);
    a.ld_map(R1, state_fd);
    a.stack_ptr(R2, KEY);
    a.call(FN_MAP_LOOKUP);
    a.j64(JEQ, R0, 0, pass);
    a.mov64(R8, R0);
    a.st(W, FP, ROUTINE, 0);
    a.st(W, FP, PROBE, NOT_PROBE); // nothing of the peer known yet: never a probe
    a.ja(pass_path);

    a.mark(found);
    a.mov64(R8, R0);
    let classified = a.label();
    by_side(&mut a, classify, classified);
    a.mark(classified);
    routine(&mut a);
    a.ldx(W, R1, R8, V_ARMED);
    a.j32(JEQ, R1, 0, not_armed);
    a.ldx(W, R1, FP, ROUTINE);
    a.j32(JNE, R1, 0, withhold);
    // The first packet that is not routine ends the withholding: the mirror as the withheld
    // packets left it is frozen for user space, which reads it before this packet.
    for i in 0..(MIRROR_SIZE / 8) {
        a.ldx(DW, R1, R8, V_LIVE + 8 * i);
        a.stx(DW, R8, V_FOLD + 8 * i, R1);
    }
    a.ldx(DW, R1, R8, V_SKIPPED);
    a.stx(DW, R8, V_FOLD_SKIPPED, R1);
    a.ldx(DW, R1, R8, V_SKIP_NS);
    a.stx(DW, R8, V_FOLD_LAST, R1);
    a.st(W, R8, V_ARMED, 0);
    a.ja(pass_path);

    // Not armed, a routine packet: is there a request for this record (same first packet)
    // from user space having read every packet passed that was not routine?
    a.mark(not_armed);
    a.ldx(W, R1, FP, ROUTINE);
    a.j32(JEQ, R1, 0, pass_path);
    a.ld_map(R1, arm_fd);
    a.stack_ptr(R2, KEY);
    a.call(FN_MAP_LOOKUP);
    a.j64(JEQ, R0, 0, pass_path);
    for i in 0..3 {
        a.ldx(W, R1, R0, 4 * i);
        a.ldx(W, R2, R8, V_FP + 4 * i);
        a.j32x(JNE, R1, R2, pass_path);
    }
    a.ldx(W, R1, R0, A_COUNT);
    a.ldx(W, R2, R8, V_NR_IDX);
    a.j32x(JLT, R1, R2, pass_path);
    // Tell user space first (the key, the count armed at, the first packet): it reads the
    // record at the packet after that count. No room for the event: no arming.
    a.ldx(W, R1, R8, V_PASSED);
    a.stx(W, FP, EVENT + E_ARMED_AT, R1);
    for i in 0..3 {
        a.ldx(W, R1, R8, V_FP + 4 * i);
        a.stx(W, FP, EVENT + E_FIRST + 4 * i, R1);
    }
    a.ld_map(R1, events_fd);
    a.stack_ptr(R2, EVENT);
    a.mov64_imm(R3, i32::from(EVENT_SIZE));
    a.mov64_imm(R4, 0);
    a.call(FN_RINGBUF_OUTPUT);
    a.j64(JNE, R0, 0, pass_path);
    a.st(W, R8, V_ARMED, 1);
    a.ld_map(R1, arm_fd);
    a.stack_ptr(R2, KEY);
    a.call(FN_MAP_DELETE);

    a.mark(withhold);
    let withheld = a.label();
    by_side(&mut a, mirror_packet, withheld);
    a.mark(withheld);
    a.ldx(DW, R1, FP, NOW);
    a.stx(DW, R8, V_SKIP_NS, R1);
    a.stx(DW, R8, V_SEEN, R1);
    a.mov64_imm(R1, 1);
    a.raw(STX | ATOMIC | DW, R8, R1, V_SKIPPED, 0); // lock *(u64 *)(r8 + 0) += r1
    a.mov64_imm(R0, 0);
    a.exit();

    // Passed: counted (its index kept when it is not routine) and mirrored.
    a.mark(pass_path);
    let mirrored = a.label();
    by_side(&mut a, mirror_packet, mirrored);
    a.mark(mirrored);
    a.mov64_imm(R1, 1);
    // r1 = fetch_add(passed, 1): concurrent passes on other CPUs get their own index
    a.raw(STX | ATOMIC | W, R8, R1, V_PASSED, 0x01);
    a.alu32_imm(ADD, R1, 1);
    let counted = a.label();
    a.ldx(W, R2, FP, ROUTINE);
    a.j32(JNE, R2, 0, counted);
    a.stx(W, R8, V_NR_IDX, R1);
    a.mark(counted);
    a.ldx(DW, R1, FP, NOW);
    a.stx(DW, R8, V_SEEN, R1);
    a.mark(pass);
    a.mov64(R0, SNAP);
    a.exit();
    a.finish()
}

// The bpf(2) system call.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
/// Bytes of arming events the kernel can queue for user space.
const EVENTS_BYTES: u32 = 1 << 18;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;
const SO_ATTACH_BPF: libc::c_int = 50;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the given size, laid out as the
    // command expects; pointers inside it point at live buffers the caller owns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn lo_hi(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

fn new_fd(r: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(r).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn map_create(key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_MAP_TYPE_HASH, key);
    attr[1] = lo_hi(value, entries);
    attr[2] = u64::from(BPF_F_NO_PREALLOC);
    new_fd(sys_bpf(BPF_MAP_CREATE, &mut attr)?)
}

fn ringbuf_create(bytes: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_MAP_TYPE_RINGBUF, 0);
    attr[1] = lo_hi(0, bytes);
    new_fd(sys_bpf(BPF_MAP_CREATE, &mut attr)?)
}

fn elem(
    cmd: libc::c_long,
    map: &OwnedFd,
    key: &[u8],
    value: *mut u8,
    flags: u64,
) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = key.as_ptr() as u64;
    attr[2] = value as u64;
    attr[3] = flags;
    sys_bpf(cmd, &mut attr).map(|_| ())
}

/// Load `prog` as a socket filter; the verifier's complaint on failure.
fn prog_load(prog: &[Ins]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_PROG_TYPE_SOCKET_FILTER, prog.len() as u32);
    attr[1] = prog.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = lo_hi(1, log.len() as u32);
    attr[4] = log.as_mut_ptr() as u64;
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => new_fd(fd),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: String = text.lines().rev().take(12).collect::<Vec<_>>().join(" | ");
            Err(io::Error::new(e.kind(), format!("{e}: {tail}")))
        }
    }
}

/// The tracker's per-flow state that a withheld segment changes, as the record mirrors it
/// (times on the capture's clock). Sides are the flow key's: 0 the lower endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mirror {
    pub next_seq: [Option<u32>; 2],
    pub last_ack: [Option<u32>; 2],
    pub window: [Option<u16>; 2],
    pub ttl: [Option<u8>; 2],
    pub last_payload: Option<Duration>,
}

/// A flow's record as the kernel keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Packets withheld while the record existed.
    pub skipped: u64,
    /// When the latest withheld packet passed the filter.
    pub last: Duration,
    /// Withholding now.
    pub armed: bool,
    /// Packets passed to user space since the record was made.
    pub passed: u32,
    /// `passed` at the latest passed packet that was not routine.
    pub nr_idx: u32,
    /// The record's first packet.
    pub first: Fingerprint,
    /// The mirror as of the latest packet.
    pub live: Mirror,
    /// The mirror, withheld count and time as the last withholding left them (frozen when a
    /// packet ended it).
    pub fold: Mirror,
    pub fold_skipped: u64,
    pub fold_last: Duration,
}

/// What identifies a packet well enough to tell a record's first one: sequence number, ACK,
/// window and the TCP flags byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub flags: u8,
}

impl Fingerprint {
    fn from_words(w: [u32; 3]) -> Self {
        Self {
            seq: w[0],
            ack: w[1],
            window: w[2] as u16,
            flags: (w[2] >> 16) as u8,
        }
    }

    fn words(&self) -> [u32; 3] {
        [
            self.seq,
            self.ack,
            u32::from(self.window) | (u32::from(self.flags) << 16),
        ]
    }
}

/// A flow key as the program builds it: ten native-endian words, each address as four
/// words read in network order (IPv4: one word and three zeros), then
/// `lower port << 16 | higher port`, then the family (4 or 6).
pub type KernelKey = [u32; 10];

/// The key for the flow between `lo` and `hi` (already in `FlowKey` order).
#[must_use]
pub fn kernel_key(lo: (std::net::IpAddr, u16), hi: (std::net::IpAddr, u16)) -> KernelKey {
    let mut k = [0u32; 10];
    let words = |ip: std::net::IpAddr, out: &mut [u32]| match ip {
        std::net::IpAddr::V4(a) => {
            out[0] = u32::from(a);
            4
        }
        std::net::IpAddr::V6(a) => {
            for (o, c) in out.iter_mut().zip(a.octets().chunks_exact(4)) {
                *o = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            }
            6
        }
    };
    let fam = words(lo.0, &mut k[0..4]);
    words(hi.0, &mut k[4..8]);
    k[8] = (u32::from(lo.1) << 16) | u32::from(hi.1);
    k[9] = fam;
    k
}

fn key_bytes(k: &KernelKey) -> [u8; KEY_SIZE as usize] {
    let mut b = [0u8; KEY_SIZE as usize];
    for (o, w) in b.chunks_exact_mut(4).zip(k) {
        o.copy_from_slice(&w.to_ne_bytes());
    }
    b
}

fn rd32(b: &[u8], at: i16) -> u32 {
    let at = at as usize;
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd64(b: &[u8], at: i16) -> u64 {
    u64::from(rd32(b, at)) | (u64::from(rd32(b, at + 4)) << 32)
}
fn wr32(b: &mut [u8], at: i16, v: u32) {
    let at = at as usize;
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The arming events' ring buffer, mapped: the consumer position (written here) on one
/// page, then the producer position and the data, mapped twice in a row so that a record
/// never wraps.
struct Events {
    _fd: OwnedFd,
    cons: *mut u8,
    prod: *mut u8,
    page: usize,
    bytes: usize,
    /// Held while draining: one consumer at a time.
    draining: std::sync::atomic::AtomicBool,
}

// SAFETY: the mappings belong to the process, not to a thread; the positions in them are
// read and written through atomics, the data only read, and `drain` lets one caller at a
// time consume (the others return at once).
unsafe impl Send for Events {}
// SAFETY: as above.
unsafe impl Sync for Events {}

const RINGBUF_BUSY: u32 = 1 << 31;
const RINGBUF_DISCARD: u32 = 1 << 30;

impl Events {
    fn new(bytes: u32) -> io::Result<Self> {
        let fd = ringbuf_create(bytes)?;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = bytes as usize;
        // SAFETY: mapping the ring buffer's pages as the kernel lays them out: the consumer
        // page read-write at offset 0, the producer page and twice the data read-only after
        // it; the descriptor is valid and the lengths are the map's.
        let cons = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if cons == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let prod = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                libc::off_t::try_from(page).unwrap_or(4096),
            )
        };
        if prod == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what was mapped just above.
            unsafe { libc::munmap(cons, page) };
            return Err(e);
        }
        Ok(Self {
            _fd: fd,
            cons: cons.cast(),
            prod: prod.cast(),
            page,
            bytes,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Hand each queued event's words to `f`, and free their room.
    fn drain(&self, mut f: impl FnMut(&[u32; EVENT_SIZE as usize / 4])) {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        // SAFETY: both positions are 8-byte aligned u64s at the start of their pages, which
        // stay mapped while `self` lives; the kernel writes the producer position, only this
        // (single) consumer writes the consumer position.
        let (cons_pos, prod_pos) = unsafe {
            (
                &*self.cons.cast::<AtomicU64>(),
                &*self.prod.cast::<AtomicU64>(),
            )
        };
        let mut c = cons_pos.load(Ordering::Relaxed);
        let p = prod_pos.load(Ordering::Acquire);
        if c == p || self.draining.swap(true, Ordering::Acquire) {
            return;
        }
        // Read again under the flag: another consumer may have moved it.
        c = c.max(cons_pos.load(Ordering::Relaxed));
        let mask = self.bytes as u64 - 1;
        // SAFETY: the data starts one page after the producer page; it is mapped twice, so
        // any record (at most EVENT_SIZE + 8 bytes) is contiguous from its start.
        let data = unsafe { self.prod.add(self.page) };
        while c < p {
            let at = (c & mask) as usize;
            // SAFETY: `at` is inside the first copy of the data; headers are 8-byte aligned.
            let hdr = unsafe { &*data.add(at).cast::<AtomicU32>() }.load(Ordering::Acquire);
            if hdr & RINGBUF_BUSY != 0 {
                break;
            }
            let len = hdr & !(RINGBUF_BUSY | RINGBUF_DISCARD);
            if hdr & RINGBUF_DISCARD == 0 && len == EVENT_SIZE as u32 {
                let mut w = [0u32; EVENT_SIZE as usize / 4];
                for (i, x) in w.iter_mut().enumerate() {
                    // SAFETY: within the record, contiguous thanks to the double mapping.
                    *x =
                        unsafe { std::ptr::read_unaligned(data.add(at + 8 + 4 * i).cast::<u32>()) };
                }
                f(&w);
            }
            c += u64::from((len + 8 + 7) & !7);
        }
        cons_pos.store(c, Ordering::Release);
        self.draining.store(false, Ordering::Release);
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two mappings made in `new`.
        unsafe {
            libc::munmap(self.cons.cast(), self.page);
            libc::munmap(self.prod.cast(), self.page + 2 * self.bytes);
        }
    }
}

/// The maps and program of one live capture.
pub struct KernelFlows {
    state: OwnedFd,
    arm: OwnedFd,
    events: Events,
    prog: OwnedFd,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (the program's clock), in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl KernelFlows {
    /// Build and load the program for a socket whose frames start with `framing`, the
    /// classic filter `classic` first.
    ///
    /// # Errors
    /// When the kernel refuses the maps or the program (no CAP_BPF, an old kernel).
    pub fn load(framing: Framing, classic: &[Insn]) -> io::Result<Self> {
        let state = map_create(KEY_SIZE, RECORD_SIZE, MAX_KERNEL_FLOWS)?;
        let arm = map_create(KEY_SIZE, ARM_SIZE, MAX_KERNEL_FLOWS)?;
        let events = Events::new(EVENTS_BYTES)?;
        let code = program(
            framing,
            classic,
            state.as_raw_fd(),
            arm.as_raw_fd(),
            events._fd.as_raw_fd(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let prog = prog_load(&code)?;
        Ok(Self {
            state,
            arm,
            events,
            prog,
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        })
    }

    /// Attach the program to packet socket `fd` (replacing any filter).
    ///
    /// # Errors
    /// setsockopt's.
    pub fn attach(&self, fd: &OwnedFd) -> io::Result<()> {
        let p: libc::c_int = self.prog.as_raw_fd();
        // SAFETY: SO_ATTACH_BPF takes the program's descriptor as an int.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_ATTACH_BPF,
                std::ptr::from_ref(&p).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn to_capture_clock(&self, mono_ns: u64) -> Duration {
        let ns = i128::from(mono_ns) + self.offset_ns;
        let ns = u128::try_from(ns.max(0)).unwrap_or(0);
        Duration::new(
            u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX),
            (ns % 1_000_000_000) as u32,
        )
    }

    fn mirror_at(&self, v: &[u8], at: i16) -> Mirror {
        let known = rd32(v, at + M_KNOWN);
        let on = |bit: u32| known & bit != 0;
        let mut m = Mirror {
            last_payload: on(LAST_PAYLOAD_KNOWN)
                .then(|| self.to_capture_clock(rd64(v, at + M_LAST_PAYLOAD))),
            ..Mirror::default()
        };
        for k in 0..2 {
            let o = k as i16;
            m.next_seq[k] = on(next_known(k)).then(|| rd32(v, at + M_NEXT + 4 * o));
            m.last_ack[k] = on(ack_known(k)).then(|| rd32(v, at + M_ACK + 4 * o));
            m.window[k] = on(win_known(k)).then(|| {
                let i = (at + M_WIN + 2 * o) as usize;
                u16::from_ne_bytes([v[i], v[i + 1]])
            });
            m.ttl[k] = on(ttl_known(k)).then(|| v[(at + M_TTL + o) as usize]);
        }
        m
    }

    /// The record of flow `key`, when the kernel keeps one.
    #[must_use]
    pub fn read(&self, key: &KernelKey) -> Option<Record> {
        let kb = key_bytes(key);
        let mut v = [0u8; RECORD_SIZE as usize];
        elem(BPF_MAP_LOOKUP_ELEM, &self.state, &kb, v.as_mut_ptr(), 0).ok()?;
        Some(Record {
            skipped: rd64(&v, V_SKIPPED),
            last: self.to_capture_clock(rd64(&v, V_SKIP_NS)),
            armed: rd32(&v, V_ARMED) != 0,
            passed: rd32(&v, V_PASSED),
            nr_idx: rd32(&v, V_NR_IDX),
            first: Fingerprint::from_words([
                rd32(&v, V_FP),
                rd32(&v, V_FP + 4),
                rd32(&v, V_FP + 8),
            ]),
            live: self.mirror_at(&v, V_LIVE),
            fold: self.mirror_at(&v, V_FOLD),
            fold_skipped: rd64(&v, V_FOLD_SKIPPED),
            fold_last: self.to_capture_clock(rd64(&v, V_FOLD_LAST)),
        })
    }

    /// Hand each arming since the last call to `f`: the flow's key, its record's first
    /// packet, and the count of passed packets it was armed at (the packet after it ends
    /// the withholding; read the record then). Cheap when there is none: one load.
    pub fn armings(&self, mut f: impl FnMut(KernelKey, Fingerprint, u32)) {
        self.events.drain(|w| {
            let mut key = [0u32; 10];
            key.copy_from_slice(&w[..10]);
            f(key, Fingerprint::from_words([w[11], w[12], w[13]]), w[10]);
        });
    }

    /// Ask the kernel to withhold flow `key`'s routine segments: user space has processed
    /// `count` packets of the flow whose first packet was `first`, and the flow is quiet
    /// after them. Taken at the next routine packet if every packet passed since the last
    /// one that was not routine has been processed.
    pub fn arm(&self, key: &KernelKey, first: &Fingerprint, count: u32) {
        let mut v = [0u8; ARM_SIZE as usize];
        for (i, w) in first.words().into_iter().enumerate() {
            wr32(&mut v, 4 * i as i16, w);
        }
        wr32(&mut v, A_COUNT, count);
        let kb = key_bytes(key);
        // A full map only means this flow is not withheld.
        let _ = elem(BPF_MAP_UPDATE_ELEM, &self.arm, &kb, v.as_mut_ptr(), 0);
    }

    /// Forget flow `key` (the tracker dropped it): its pending request, and its record
    /// too when `record`.
    pub fn forget(&self, key: &KernelKey, record: bool) {
        let kb = key_bytes(key);
        if record {
            let _ = elem(
                BPF_MAP_DELETE_ELEM,
                &self.state,
                &kb,
                std::ptr::null_mut(),
                0,
            );
        }
        let _ = elem(BPF_MAP_DELETE_ELEM, &self.arm, &kb, std::ptr::null_mut(), 0);
    }

    /// Run the program once over `frame` in the kernel (BPF_PROG_TEST_RUN): what it returns
    /// (bytes kept, 0 dropped or withheld). For tests; `frame` starts with its link header.
    ///
    /// # Errors
    /// The kernel's.
    pub fn test_run(&self, frame: &[u8]) -> io::Result<u32> {
        // The test run strips an Ethernet header before a socket filter sees the packet:
        // a throw-away one goes first.
        let mut data = vec![0u8; 14];
        data[12] = 0x08;
        data.extend_from_slice(frame);
        let mut attr = [0u64; 10];
        attr[0] = u64::from(self.prog.as_raw_fd() as u32);
        attr[1] = u64::from(data.len() as u32);
        attr[2] = data.as_ptr() as u64;
        attr[4] = 1; // repeat once
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        Ok((attr[0] >> 32) as u32)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::analyze::Filter;
    use crate::craft::{ethernet_frame, ip_packet, Rng, TcpSpec};
    use crate::io::bpf::{program_checked, run};
    use std::net::SocketAddr;

    /// The kernel lets this process load programs (root in CI); elsewhere the tests say so
    /// and pass.
    fn loadable() -> bool {
        match map_create(8, 8, 1) {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI runs as root and must load eBPF: {e}"
                );
                eprintln!("skipped: needs CAP_BPF ({e})");
                false
            }
        }
    }

    fn spec(src: &str, dst: &str, seq: u32, ack: u32, flags: u8, payload: usize) -> TcpSpec {
        let mut s = TcpSpec::new(
            src.parse::<SocketAddr>().unwrap(),
            dst.parse::<SocketAddr>().unwrap(),
            seq,
            ack,
        );
        s.flags = flags;
        s.payload = vec![0x61; payload];
        s
    }

    #[test]
    fn the_translated_filter_keeps_and_drops_what_the_classic_one_does() {
        if !loadable() {
            return;
        }
        let mut frames: Vec<TcpSpec> = Vec::new();
        for (a, b) in [
            ("127.0.0.1:5000", "127.0.0.1:80"),
            ("127.0.0.2:81", "127.0.0.1:5001"),
            ("[::1]:5000", "[::1]:80"),
            ("[::2]:443", "[::1]:5002"),
        ] {
            for (flags, len) in [(0x02, 0), (0x10, 0), (0x18, 100), (0x11, 0), (0x04, 0)] {
                frames.push(spec(a, b, 1000, 2000, flags, len));
            }
        }
        let exprs = [
            None,
            Some("tcp[tcpflags] & tcp-syn != 0 and port 80"),
            Some("ip6 and dst port 80"),
            Some("len > 100 or src port 81"),
            Some("tcp[13] / 8 = 3"),
        ];
        let filters = [
            Filter::default(),
            Filter {
                port: Some(80),
                host: None,
            },
            Filter {
                port: None,
                host: Some("::1".parse().unwrap()),
            },
        ];
        let mut checked = 0;
        for framing in [Framing::Ethernet, Framing::Ip] {
            for f in &filters {
                for e in exprs {
                    let expr = e.map(|t| crate::filter::Expression::parse(t).unwrap());
                    let classic =
                        program_checked(framing, f, expr.as_ref().map(|x| &x.expr), 160).unwrap();
                    let k = KernelFlows::load(framing, &classic).unwrap();
                    let mut udp = ethernet_frame(&frames[0]);
                    udp[14 + 9] = 17;
                    let mut bytes: Vec<Vec<u8>> = frames
                        .iter()
                        .map(|s| match framing {
                            Framing::Ethernet => ethernet_frame(s),
                            Framing::Ip => ip_packet(s),
                        })
                        .collect();
                    bytes.push(udp);
                    // cut inside the TCP header
                    let mut cut = bytes[0].clone();
                    cut.truncate(cut.len() - 10);
                    bytes.push(cut);
                    for b in &bytes {
                        assert_eq!(
                            k.test_run(b).map_err(|e| format!("{e} {b:02x?}")).unwrap(),
                            run(&classic, b),
                            "{framing:?} {f:?} {e:?} {b:02x?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 300);
    }

    #[test]
    fn routine_segments_of_an_armed_flow_are_withheld_and_the_rest_passed() {
        if !loadable() {
            return;
        }
        const ACK: u8 = 0x10;
        const PSH: u8 = 0x08;
        for (client, server) in [
            ("127.0.0.1:40000", "127.0.0.1:80"),
            ("[::1]:40000", "[::1]:80"),
        ] {
            let classic =
                program_checked(Framing::Ethernet, &Filter::default(), None, 160).unwrap();
            let k = KernelFlows::load(Framing::Ethernet, &classic).unwrap();
            let c: SocketAddr = client.parse().unwrap();
            let s: SocketAddr = server.parse().unwrap();
            // The server (port 80) is the key's lower endpoint: side 0, the client side 1.
            let key = kernel_key((s.ip(), s.port()), (c.ip(), c.port()));
            let up = |seq, ack, flags, len| {
                k.test_run(&ethernet_frame(&spec(client, server, seq, ack, flags, len)))
                    .unwrap()
            };
            let down = |seq, ack, flags, len| {
                k.test_run(&ethernet_frame(&spec(server, client, seq, ack, flags, len)))
                    .unwrap()
            };
            let first = Fingerprint {
                seq: 1000,
                ack: 5000,
                window: 512,
                flags: ACK | PSH,
            };

            assert_eq!(up(1000, 5000, ACK | PSH, 10), 160, "a new flow");
            assert_eq!(up(1010, 5000, ACK | PSH, 10), 160, "not asked to withhold");
            let r = k.read(&key).unwrap();
            assert_eq!((r.passed, r.nr_idx, r.skipped), (2, 1, 0));
            let armings = || {
                let mut v = Vec::new();
                k.armings(|kk, f, at| v.push((kk, f, at)));
                v
            };
            assert_eq!(armings(), vec![], "not armed");
            assert_eq!(r.live.next_seq, [None, Some(1020)]);
            // Asked after both: the next routine segment starts the withholding.
            k.arm(&key, &first, 2);
            assert_eq!(down(5000, 1020, ACK, 0), 0, "an ACK");
            assert_eq!(up(1020, 5000, ACK | PSH, 10), 0, "data");
            assert_eq!(down(5000, 1030, ACK, 0), 0, "its ACK");
            let r = k.read(&key).unwrap();
            assert!(r.armed);
            assert_eq!(r.skipped, 3);
            assert_eq!(armings(), vec![(key, first, 2)], "one arming, at 2 passed");
            assert_eq!(
                crate::flow::table::FlowKey::from_kernel_key(&key),
                crate::flow::table::FlowKey::new(
                    crate::flow::table::Ep::new(c.ip(), c.port()),
                    crate::flow::table::Ep::new(s.ip(), s.port())
                )
            );
            assert_eq!(r.live.next_seq, [Some(5000), Some(1030)]);
            assert_eq!(r.live.last_ack, [Some(1030), Some(5000)]);
            // A keep-alive (one below what the server acknowledged) ends it, and the state
            // the withheld segments left is frozen for user space.
            assert_eq!(up(1029, 5000, ACK, 0), 160, "keep-alive");
            let r = k.read(&key).unwrap();
            assert!(!r.armed);
            assert_eq!((r.passed, r.nr_idx, r.fold_skipped), (3, 3, 3));
            assert_eq!(r.fold.next_seq, [Some(5000), Some(1030)]);
            assert!(r.fold.last_payload.is_some());
            assert_eq!(r.fold.ttl, [Some(64), Some(64)]);
            assert_eq!(down(5000, 1030, ACK, 0), 160, "its answer");
            // A request made before the keep-alive was read is never taken; nor one for
            // another first packet (a record of another lifetime).
            k.arm(&key, &first, 2);
            assert_eq!(up(1030, 5000, ACK | PSH, 10), 160, "stale");
            k.arm(&key, &Fingerprint { seq: 1, ..first }, 9);
            assert_eq!(up(1040, 5000, ACK | PSH, 10), 160, "another lifetime");
            // Asked after the keep-alive (its answer and the data still unread, both
            // routine): taken.
            k.arm(&key, &first, 3);
            assert_eq!(up(1050, 5000, ACK | PSH, 10), 0);
            let r = k.read(&key).unwrap();
            assert_eq!(r.skipped, 4);
            assert_eq!(armings(), vec![(key, first, 6)], "armed again, at 6 passed");
            // Data after half a second of silence is a reuse: passed.
            std::thread::sleep(Duration::from_millis(600));
            assert_eq!(up(1060, 5000, ACK | PSH, 10), 160, "reuse after idle");
            // FIN and RST: always passed.
            k.arm(&key, &first, 7);
            assert_eq!(down(5000, 1070, ACK | 0x01, 0), 160, "FIN");
            assert_eq!(up(1070, 5001, 0x04, 0), 160, "RST");
            assert_eq!(k.read(&key).unwrap().skipped, 4);
            k.forget(&key, true);
            assert!(k.read(&key).is_none());
        }
    }

    fn packets_of(o: &[crate::flow::track::Event]) -> Vec<String> {
        o.iter()
            .filter_map(|e| match e {
                crate::flow::track::Event::Packet(p) => Some(format!(
                    "#{} {:?} {} {} {} {} {}",
                    p.frame, p.kind, p.src, p.seq, p.ack, p.probe_number, p.unanswered_before
                )),
                _ => None,
            })
            .collect()
    }

    /// One random flow's state as the generator sends it.
    struct GenFlow {
        eps: [SocketAddr; 2],
        next: [u32; 2],
        win: [u16; 2],
    }

    fn now() -> Duration {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    }

    /// The property behind withholding: a tracker fed only what the kernel passed (with
    /// the kernel's records, and processing each packet some packets late, as from the
    /// ring) reports exactly what a tracker fed every packet reports. Random traffic over
    /// eight flows: data both ways, ACKs, keep-alives and their answers, zero windows and
    /// zero-window probes, retransmissions, segments ahead of order, FIN, RST, new SYNs on
    /// the same 4-tuple, and real pauses past the reuse and silence limits.
    #[test]
    fn a_tracker_fed_what_the_kernel_passed_reports_what_one_fed_everything_does() {
        use crate::flow::track::{Event, Tracker, TrackerConfig};
        use crate::wire::packet::{parse_frame, LinkType};
        use std::sync::Arc;
        if !loadable() {
            return;
        }
        for seed in [7u64, 1234, 55_446, 99_991] {
            let classic = program_checked(Framing::Ip, &Filter::default(), None, 160).unwrap();
            let k = Arc::new(KernelFlows::load(Framing::Ip, &classic).unwrap());
            let mut rng = Rng(seed);
            let mut flows: Vec<GenFlow> = (0..8u16)
                .map(|i| {
                    let (c, s) = if i % 2 == 0 {
                        (
                            format!("127.0.0.1:{}", 40_000 + i),
                            "127.0.0.2:80".to_string(),
                        )
                    } else {
                        (format!("[::1]:{}", 40_000 + i), "[::2]:443".to_string())
                    };
                    GenFlow {
                        eps: [c.parse().unwrap(), s.parse().unwrap()],
                        next: [1_000 * u32::from(i + 1), u32::MAX - 5_000 * u32::from(i)],
                        win: [5_000, 5_000],
                    }
                })
                .collect();
            let mut every = Tracker::new(TrackerConfig::default());
            let mut passed_only = Tracker::new(TrackerConfig::default());
            passed_only.set_kernel(Some(Arc::clone(&k)));
            let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
            let mut late: std::collections::VecDeque<(u64, Duration, Vec<u8>)> =
                std::collections::VecDeque::new();
            let mut lag = 0usize;
            let mut trace: Vec<String> = Vec::new();
            let steps = 6_000u64;
            for n in 1..=steps {
                if n % 2_000 == 0 {
                    // silence past a second for all, then past the reuse gap
                    std::thread::sleep(Duration::from_millis(if n == 2_000 { 1_100 } else { 600 }));
                }
                let f = &mut flows[rng.below(8) as usize];
                let side = rng.below(2) as usize;
                let (mut seq, ack) = (f.next[side], f.next[1 - side]);
                let mut flags = 0x10u8;
                let mut len = 0u32;
                // Per mille: mostly data and ACKs, as on a real link, so that flows are
                // withheld in runs between the rest.
                match rng.below(1_000) {
                    0..=499 => {
                        len = 1 + rng.below(1_400) as u32;
                        flags |= 0x08;
                        f.next[side] = seq.wrapping_add(len);
                    }
                    500..=849 => {}
                    850..=869 => seq = seq.wrapping_sub(1), // a keep-alive
                    870..=877 => {
                        seq = seq.wrapping_sub(1);
                        len = 1; // a keep-alive with a byte, or a zero-window probe
                    }
                    878..=892 => f.win[side] = if f.win[side] == 0 { 5_000 } else { 0 },
                    893..=912 => {
                        len = 100;
                        seq = seq.wrapping_sub(300); // a retransmission
                    }
                    913..=922 => {
                        len = 100;
                        seq = seq.wrapping_add(5_000); // ahead of order
                    }
                    923..=932 => {
                        len = 1; // one byte at snd_una: into a zero window, a probe
                    }
                    933..=937 => {
                        flags |= 0x01;
                        f.next[side] = seq.wrapping_add(1);
                    }
                    938..=940 => flags = 0x14,
                    941..=943 => {
                        flags = 0x02; // a new connection on the same 4-tuple
                        f.next[side] = seq.wrapping_add(1_000_003);
                        seq = f.next[side];
                        f.next[side] = seq.wrapping_add(1);
                    }
                    _ => {
                        len = 1 + rng.below(20) as u32;
                        flags |= 0x08;
                        f.next[side] = seq.wrapping_add(len);
                    }
                }
                let mut spec = TcpSpec::new(f.eps[side], f.eps[1 - side], seq, ack);
                spec.flags = flags;
                spec.window = f.win[side];
                spec.payload = vec![b'p'; len as usize];
                let ip = ip_packet(&spec);
                let kept = k.test_run(&ip).unwrap();
                trace.push(format!(
                    "#{n} {} > {} seq {seq} ack {ack} flags {flags:#x} len {len} win {} kept {kept}",
                    spec.src, spec.dst, spec.window
                ));
                let ts = now();
                let p = parse_frame(LinkType::RawIp, &ip).unwrap();
                every.process(n, ts, &p, &mut out_a);
                if kept > 0 {
                    late.push_back((n, ts, ip));
                }
                if rng.below(50) == 0 {
                    lag = rng.below(12) as usize;
                }
                while late.len() > lag {
                    let (m, t, ip) = late.pop_front().unwrap();
                    passed_only.process(
                        m,
                        t,
                        &parse_frame(LinkType::RawIp, &ip).unwrap(),
                        &mut out_b,
                    );
                }
            }
            while let Some((m, t, ip)) = late.pop_front() {
                passed_only.process(
                    m,
                    t,
                    &parse_frame(LinkType::RawIp, &ip).unwrap(),
                    &mut out_b,
                );
            }
            every.finish(&mut out_a);
            passed_only.finish(&mut out_b);
            let (sa, sb) = (every.stats().clone(), passed_only.stats().clone());
            assert_eq!(sa.tcp_packets, sb.tcp_packets, "seed {seed}");
            {
                let (pa, pb) = (packets_of(&out_a), packets_of(&out_b));
                if let Some(i) = (0..pa.len().min(pb.len())).find(|&i| pa[i] != pb[i]) {
                    let frame: usize = pa[i][1..].split(' ').next().unwrap().parse().unwrap();
                    let who = trace[frame - 1].split(' ').nth(1).unwrap().to_string();
                    let other = trace[frame - 1].split(' ').nth(3).unwrap().to_string();
                    let flow: Vec<&String> = trace[..frame + 3]
                        .iter()
                        .filter(|t| t.contains(&who) && t.contains(&other))
                        .collect();
                    panic!(
                        "seed {seed}: event {i}: every packet {:?}\nwithheld {:?}\n{}",
                        &pa[i.saturating_sub(2)..(i + 3).min(pa.len())],
                        &pb[i.saturating_sub(2)..(i + 3).min(pb.len())],
                        flow[flow.len().saturating_sub(40)..]
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
            assert_eq!(sa.keepalives, sb.keepalives, "seed {seed}");
            assert_eq!(sa.keepalive_acks, sb.keepalive_acks, "seed {seed}");
            assert_eq!(sa.zero_window_probes, sb.zero_window_probes, "seed {seed}");
            let packets = |o: &[Event]| -> Vec<String> {
                o.iter()
                    .filter_map(|e| match e {
                        Event::Packet(p) => Some(format!(
                            "{:?} {} {} {} {} {}",
                            p.kind, p.src, p.seq, p.ack, p.probe_number, p.unanswered_before
                        )),
                        _ => None,
                    })
                    .collect()
            };
            assert_eq!(packets(&out_a), packets(&out_b), "seed {seed}");
            let summaries = |o: &[Event]| -> Vec<String> {
                let mut v: Vec<String> = o
                    .iter()
                    .filter_map(|e| match e {
                        Event::Flow(f) => Some(format!(
                            "{} {} packets {} ka {}/{} zwp {} {:?} {:?} {:?} failed {} reuses {:?}",
                            f.client,
                            f.server,
                            f.packets,
                            f.keepalives,
                            f.answered,
                            f.zero_window_probes,
                            f.outcome,
                            f.ending.by,
                            f.ending.how,
                            f.ending.reuse_failed,
                            f.ending.reuses.iter().map(|r| r.result).collect::<Vec<_>>(),
                        )),
                        _ => None,
                    })
                    .collect();
                v.sort();
                v
            };
            assert_eq!(summaries(&out_a), summaries(&out_b), "seed {seed}");
            assert!(
                sb.withheld * 10 > sa.tcp_packets,
                "seed {seed}: withheld {} of {}",
                sb.withheld,
                sa.tcp_packets
            );
        }
    }
}

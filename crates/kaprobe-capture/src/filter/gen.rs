//! Filter expressions compiled into classic BPF, once per IP version: where the packet is
//! IPv4 (IP header at `n`, its length loaded into X with `ldxb 4*([n]&0xf)`) the IPv6
//! primitives are constant false, and the other way round, so each copy is short.

use std::net::IpAddr;

use super::{ArOp, Arith, Dir, Expr, Prim, Proto, RelOp};
use crate::io::bpf::{op, Asm, Label};

/// Which IP version the code runs on, and where its header starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fam {
    V4(u32),
    V6(u32),
}

/// BPF scratch memory words.
const MEM_WORDS: usize = 16;

/// Emit code that jumps to `t` when `e` holds for the (TCP) packet and to `f` when not.
///
/// # Errors
/// When the expression needs more scratch memory than BPF has.
pub(crate) fn gen(a: &mut Asm, e: &Expr, fam: Fam, t: Label, f: Label) -> Result<(), &'static str> {
    match e {
        Expr::True => a.goto(t),
        Expr::Not(x) => gen(a, x, fam, f, t)?,
        Expr::And(x, y) => {
            let mid = a.label();
            gen(a, x, fam, mid, f)?;
            a.mark(mid);
            gen(a, y, fam, t, f)?;
        }
        Expr::Or(x, y) => {
            let mid = a.label();
            gen(a, x, fam, t, mid)?;
            a.mark(mid);
            gen(a, y, fam, t, f)?;
        }
        Expr::Prim(p) => prim(a, p, fam, t, f),
        Expr::Rel(op, l, r) => {
            if !fits(l, fam) || !fits(r, fam) {
                // `ip[0]` on an IPv6 packet: the relation cannot hold.
                a.goto(f);
                return Ok(());
            }
            rel(a, *op, l, r, fam, t, f)?;
        }
    }
    Ok(())
}

/// Whether a protocol qualifier can hold on a TCP packet of this family.
fn proto_ok(p: Proto, fam: Fam) -> bool {
    match p {
        Proto::Any | Proto::Tcp => true,
        Proto::Ip => matches!(fam, Fam::V4(_)),
        Proto::Ip6 => matches!(fam, Fam::V6(_)),
        Proto::Udp | Proto::Icmp | Proto::Icmp6 | Proto::Sctp => false,
    }
}

fn prim(a: &mut Asm, p: &Prim, fam: Fam, t: Label, f: Label) {
    match p {
        Prim::Proto(p) => a.goto(if proto_ok(*p, fam) { t } else { f }),
        Prim::Greater(n) => {
            a.op(op::LD_W_LEN, 0);
            a.jump(op::JGE_K, *n, t, f);
        }
        Prim::Less(n) => {
            a.op(op::LD_W_LEN, 0);
            a.jump(op::JGT_K, *n, f, t);
        }
        Prim::Net {
            proto,
            dir,
            addr,
            prefix,
        } => {
            let same_family = matches!(
                (addr, fam),
                (IpAddr::V4(_), Fam::V4(_)) | (IpAddr::V6(_), Fam::V6(_))
            );
            if !proto_ok(*proto, fam) || !same_family {
                a.goto(f);
                return;
            }
            directed(a, *dir, t, f, |a, src, t, f| {
                net(a, fam, src, *addr, *prefix, t, f)
            });
        }
        Prim::Port { proto, dir, lo, hi } => {
            if !proto_ok(*proto, fam) {
                a.goto(f);
                return;
            }
            directed(a, *dir, t, f, |a, src, t, f| {
                tcp_load(a, fam, if src { 0 } else { 2 }, 2);
                if lo == hi {
                    a.jump(op::JEQ_K, u32::from(*lo), t, f);
                } else {
                    let next = a.label();
                    a.jump(op::JGE_K, u32::from(*lo), next, f);
                    a.mark(next);
                    a.jump(op::JGT_K, u32::from(*hi), f, t);
                }
            });
        }
    }
}

/// Combine a test of the source (`src` true) and of the destination as `dir` says.
fn directed(
    a: &mut Asm,
    dir: Dir,
    t: Label,
    f: Label,
    mut test: impl FnMut(&mut Asm, bool, Label, Label),
) {
    match dir {
        Dir::Src => test(a, true, t, f),
        Dir::Dst => test(a, false, t, f),
        Dir::SrcOrDst => {
            let other = a.label();
            test(a, true, t, other);
            a.mark(other);
            test(a, false, t, f);
        }
        Dir::SrcAndDst => {
            let other = a.label();
            test(a, true, other, f);
            a.mark(other);
            test(a, false, t, f);
        }
    }
}

fn net(a: &mut Asm, fam: Fam, src: bool, addr: IpAddr, prefix: u8, t: Label, f: Label) {
    let (base, words): (u32, Vec<u32>) = match (fam, addr) {
        (Fam::V4(n), IpAddr::V4(v)) => (n + if src { 12 } else { 16 }, vec![u32::from(v)]),
        (Fam::V6(n), IpAddr::V6(v)) => {
            let o = v.octets();
            let w = (0..4)
                .map(|i| u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
                .collect();
            (n + if src { 8 } else { 24 }, w)
        }
        _ => {
            a.goto(f);
            return;
        }
    };
    let mut left = u32::from(prefix);
    let mut tests = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let bits = left.min(32);
        left -= bits;
        if bits == 0 {
            continue;
        }
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        tests.push((base + 4 * i as u32, mask, w & mask));
    }
    if tests.is_empty() {
        a.goto(t);
        return;
    }
    let last = tests.len() - 1;
    for (i, (at, mask, want)) in tests.into_iter().enumerate() {
        a.op(op::LD_W_ABS, at);
        if mask != u32::MAX {
            a.op(op::ALU_AND_K, mask);
        }
        if i == last {
            a.jump(op::JEQ_K, want, t, f);
        } else {
            let next = a.label();
            a.jump(op::JEQ_K, want, next, f);
            a.mark(next);
        }
    }
}

/// Load `size` bytes at `off` into the TCP header into A.
fn tcp_load(a: &mut Asm, fam: Fam, off: u32, size: u8) {
    match fam {
        Fam::V4(n) => {
            a.op(op::LDX_B_MSH, n);
            a.op(ind(size), n + off);
        }
        Fam::V6(n) => a.op(abs(size), n + 40 + off),
    }
}

fn abs(size: u8) -> u16 {
    match size {
        1 => op::LD_B_ABS,
        2 => op::LD_H_ABS,
        _ => op::LD_W_ABS,
    }
}

fn ind(size: u8) -> u16 {
    match size {
        1 => op::LD_B_IND,
        2 => op::LD_H_IND,
        _ => op::LD_W_IND,
    }
}

/// Whether every load in `e` can be made on a packet of this family.
fn fits(e: &Arith, fam: Fam) -> bool {
    match e {
        Arith::Num(_) | Arith::Len => true,
        // As in libpcap, `tcp[...]` (and the other transport headers) index IPv4 only:
        // pcap-filter(7) says upper-layer protocol offsets apply to IPv4, not IPv6.
        Arith::Load { proto, off, .. } => {
            let ok = match proto {
                Proto::Tcp | Proto::Udp | Proto::Icmp | Proto::Sctp => matches!(fam, Fam::V4(_)),
                p => proto_ok(*p, fam),
            };
            ok && fits(off, fam)
        }
        Arith::Bin(_, l, r) => fits(l, fam) && fits(r, fam),
    }
}

fn alu(op: ArOp) -> u16 {
    match op {
        ArOp::Add => 0x00,
        ArOp::Sub => 0x10,
        ArOp::Mul => 0x20,
        ArOp::Div => 0x30,
        ArOp::Or => 0x40,
        ArOp::And => 0x50,
        ArOp::Shl => 0x60,
        ArOp::Shr => 0x70,
        ArOp::Mod => 0x90,
    }
}

/// Compute `e` into A, using scratch words from `depth` up.
fn arith(a: &mut Asm, e: &Arith, fam: Fam, depth: usize) -> Result<(), &'static str> {
    match e {
        Arith::Num(k) => a.op(op::LD_IMM, *k),
        Arith::Len => a.op(op::LD_W_LEN, 0),
        Arith::Load { proto, off, size } => {
            let (base, tcp) = match (proto, fam) {
                (Proto::Tcp, Fam::V4(n)) => (n, true),
                (Proto::Tcp, Fam::V6(n)) => (n + 40, false),
                (_, Fam::V4(n) | Fam::V6(n)) => (n, false),
            };
            if let Arith::Num(k) = **off {
                if tcp {
                    a.op(op::LDX_B_MSH, base);
                    a.op(ind(*size), base.wrapping_add(k));
                } else {
                    a.op(abs(*size), base.wrapping_add(k));
                }
            } else {
                arith(a, off, fam, depth)?;
                if tcp {
                    a.op(op::LDX_B_MSH, base);
                    a.op(op::ALU_X | alu(ArOp::Add), 0);
                }
                a.op(op::TAX, 0);
                a.op(ind(*size), base);
            }
        }
        Arith::Bin(o, l, r) => {
            if let Arith::Num(k) = **r {
                arith(a, l, fam, depth)?;
                a.op(op::ALU_K | alu(*o), k);
            } else {
                if depth >= MEM_WORDS {
                    return Err("the filter's arithmetic is nested too deeply for BPF");
                }
                arith(a, r, fam, depth)?;
                a.op(op::ST, depth as u32);
                arith(a, l, fam, depth + 1)?;
                a.op(op::LDX_MEM, depth as u32);
                a.op(op::ALU_X | alu(*o), 0);
            }
        }
    }
    Ok(())
}

fn rel(
    a: &mut Asm,
    o: RelOp,
    l: &Arith,
    r: &Arith,
    fam: Fam,
    t: Label,
    f: Label,
) -> Result<(), &'static str> {
    // (jump opcode, swap targets)
    let (code, swap) = match o {
        RelOp::Eq => (0x10, false),
        RelOp::Ne => (0x10, true),
        RelOp::Gt => (0x20, false),
        RelOp::Le => (0x20, true),
        RelOp::Ge => (0x30, false),
        RelOp::Lt => (0x30, true),
    };
    let (t, f) = if swap { (f, t) } else { (t, f) };
    if let Arith::Num(k) = r {
        arith(a, l, fam, 0)?;
        a.jump(op::JMP | code, *k, t, f);
    } else {
        arith(a, r, fam, 0)?;
        a.op(op::ST, 0);
        arith(a, l, fam, 1)?;
        a.op(op::LDX_MEM, 0);
        a.jump(op::JMP | code | op::SRC_X, 0, t, f);
    }
    Ok(())
}

//! A classic BPF program for live capture: the kernel keeps only what the analysis can use
//! (TCP over IPv4/IPv6, optionally to or from one port and one address) and truncates each
//! kept packet to its headers.
//!
//! Decisions the program cannot make cheaply (IPv6 extension headers, stacked VLAN tags)
//! accept the packet: user space decides, so the filter never hides a packet that matters.

use std::net::IpAddr;

use crate::analyze::Filter;
use crate::filter::{gen::Fam, Expr};

/// Bytes kept of each packet by default: Ethernet (14) + two VLAN tags (8) + IPv6 (40) + a
/// small extension header + TCP with every option (60), with room to spare.
pub const DEFAULT_SNAPLEN: u32 = 160;

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Where the network header starts in what the kernel hands the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An Ethernet header (Ethernet, veth, loopback read with SOCK_RAW).
    Ethernet,
    /// The IP header itself (SOCK_DGRAM, tun, ppp).
    Ip,
}

/// Classic BPF opcodes (linux/filter.h, bpf_common.h), the ones kaprobe emits.
pub(crate) mod op {
    pub const LD_IMM: u16 = 0x00;
    pub const LD_W_ABS: u16 = 0x20;
    pub const LD_H_ABS: u16 = 0x28;
    pub const LD_B_ABS: u16 = 0x30;
    pub const LD_W_IND: u16 = 0x40;
    pub const LD_H_IND: u16 = 0x48;
    pub const LD_B_IND: u16 = 0x50;
    pub const LD_W_LEN: u16 = 0x80;
    pub const LDX_MEM: u16 = 0x61;
    pub const LDX_B_MSH: u16 = 0xb1;
    pub const ST: u16 = 0x02;
    pub const TAX: u16 = 0x07;
    /// ALU class with a constant operand; OR in the operation (0x00 add ... 0x90 mod).
    pub const ALU_K: u16 = 0x04;
    /// ALU class with X as the operand.
    pub const ALU_X: u16 = 0x0c;
    pub const ALU_AND_K: u16 = 0x54;
    /// Jump class; OR in 0x10 jeq, 0x20 jgt, 0x30 jge, 0x40 jset, and [`SRC_X`].
    pub const JMP: u16 = 0x05;
    pub const SRC_X: u16 = 0x08;
    pub const JEQ_K: u16 = 0x15;
    pub const JGT_K: u16 = 0x25;
    pub const JGE_K: u16 = 0x35;
    pub const JSET_K: u16 = 0x45;
    pub const RET_K: u16 = 0x06;
}
use op::{ALU_AND_K, JEQ_K, JSET_K, LDX_B_MSH, LD_B_ABS, LD_H_ABS, LD_H_IND, LD_W_ABS, RET_K};

const ETH_IPV4: u32 = 0x0800;
const ETH_IPV6: u32 = 0x86dd;
const ETH_VLAN: [u32; 3] = [0x8100, 0x88a8, 0x9100];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Label {
    Accept,
    Drop,
    At(usize),
}

/// Instructions with symbolic jump targets, resolved by [`Asm::finish`].
pub(crate) struct Asm {
    code: Vec<(u16, Label, Label, u32)>,
    /// Label positions (index into `code`), by label number.
    marks: Vec<Option<usize>>,
}

impl Asm {
    fn new() -> Self {
        Self {
            code: Vec::new(),
            marks: Vec::new(),
        }
    }

    pub(crate) fn label(&mut self) -> Label {
        self.marks.push(None);
        Label::At(self.marks.len() - 1)
    }

    pub(crate) fn mark(&mut self, l: Label) {
        if let Label::At(i) = l {
            self.marks[i] = Some(self.code.len());
        }
    }

    pub(crate) fn op(&mut self, code: u16, k: u32) {
        self.code.push((code, Label::Drop, Label::Drop, k));
    }

    /// A conditional jump (`code` of the jump class) to `t` or `f`.
    pub(crate) fn jump(&mut self, code: u16, k: u32, t: Label, f: Label) {
        self.code.push((code, t, f, k));
    }

    /// Always to `l`.
    pub(crate) fn goto(&mut self, l: Label) {
        self.code.push((JEQ_K, l, l, 0));
    }

    /// Jump to `t` when the accumulator equals `k`, else fall through.
    fn jeq(&mut self, k: u32, t: Label) {
        let next = self.label();
        self.code.push((JEQ_K, t, next, k));
        self.mark(next);
    }

    /// Jump to `f` unless the accumulator equals `k`.
    fn jne(&mut self, k: u32, f: Label) {
        let next = self.label();
        self.code.push((JEQ_K, next, f, k));
        self.mark(next);
    }

    /// Jump to `t` when any bit of `k` is set in the accumulator.
    fn jset(&mut self, k: u32, t: Label) {
        let next = self.label();
        self.code.push((JSET_K, t, next, k));
        self.mark(next);
    }

    fn finish(self, snaplen: u32) -> Result<Vec<Insn>, &'static str> {
        let n = self.code.len();
        if n + 2 > 4096 {
            return Err("the filter compiles to more than the kernel's 4096 BPF instructions");
        }
        // The two returns sit at the end: accept, then drop.
        let pos = |l: Label| match l {
            Label::Accept => n,
            Label::Drop => n + 1,
            Label::At(i) => self.marks[i].unwrap_or(n + 1),
        };
        let mut out: Vec<Insn> = self
            .code
            .iter()
            .enumerate()
            .map(|(i, &(code, t, f, k))| {
                let rel = |l: Label| {
                    // Jumps only go forward; one further than 255 is caught below.
                    u8::try_from(pos(l).saturating_sub(i + 1)).unwrap_or(u8::MAX)
                };
                if code & 0x07 == op::JMP {
                    Insn {
                        code,
                        jt: rel(t),
                        jf: rel(f),
                        k,
                    }
                } else {
                    Insn {
                        code,
                        jt: 0,
                        jf: 0,
                        k,
                    }
                }
            })
            .collect();
        out.push(Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: snaplen,
        });
        out.push(Insn {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        });
        let too_far = self.code.iter().enumerate().any(|(i, &(code, t, f, _))| {
            code & 0x07 == op::JMP
                && [t, f]
                    .iter()
                    .any(|l| pos(*l) < i + 1 || pos(*l) - (i + 1) > 255)
        });
        if too_far {
            return Err("the filter is too long for BPF's 255-instruction jumps: shorten it");
        }
        Ok(out)
    }
}

fn canon(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The host as an IPv6 address in four big-endian words (IPv4 as v4-mapped).
fn words6(ip: IpAddr) -> [u32; 4] {
    let o = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Port test with the TCP header at X + `off` (IPv4) or at the fixed `off` (IPv6).
fn ports(a: &mut Asm, filter: &Filter, ind: bool, off: u32, pass: Label) {
    let Some(port) = filter.port else {
        // No port condition: on to `pass`.
        a.goto(pass);
        return;
    };
    let load = if ind { LD_H_IND } else { LD_H_ABS };
    a.op(load, off);
    a.jeq(u32::from(port), pass);
    a.op(load, off + 2);
    a.jeq(u32::from(port), pass);
    a.goto(Label::Drop);
}

/// After the built-in checks passed (at `pass`): the user's expression, if any.
fn then_expr(a: &mut Asm, pass: Label, expr: Option<&Expr>, fam: Fam) -> Result<(), &'static str> {
    if let Some(e) = expr {
        a.mark(pass);
        crate::filter::gen(a, e, fam, Label::Accept, Label::Drop)?;
    }
    Ok(())
}

fn pass_label(a: &mut Asm, expr: Option<&Expr>) -> Label {
    if expr.is_some() {
        a.label()
    } else {
        Label::Accept
    }
}

fn ipv4(a: &mut Asm, filter: &Filter, n: u32, expr: Option<&Expr>) -> Result<(), &'static str> {
    a.op(LD_B_ABS, n + 9);
    a.jne(6, Label::Drop);
    // Fragments are never analysed.
    a.op(LD_H_ABS, n + 6);
    a.jset(0x3fff, Label::Drop);
    if let Some(h) = filter.host {
        let IpAddr::V4(v4) = canon(h) else {
            // An IPv6 host never matches an IPv4 packet.
            a.code.push((JEQ_K, Label::Drop, Label::Drop, 0));
            return Ok(());
        };
        let want = u32::from(v4);
        let port = a.label();
        a.op(LD_W_ABS, n + 12);
        a.jeq(want, port);
        a.op(LD_W_ABS, n + 16);
        a.jne(want, Label::Drop);
        a.mark(port);
    }
    a.op(LDX_B_MSH, n);
    let pass = pass_label(a, expr);
    ports(a, filter, true, n, pass);
    then_expr(a, pass, expr, Fam::V4(n))
}

fn ipv6(a: &mut Asm, filter: &Filter, n: u32, expr: Option<&Expr>) -> Result<(), &'static str> {
    a.op(LD_B_ABS, n + 6);
    let tcp = a.label();
    a.jeq(6, tcp);
    // Extension headers (hop-by-hop, routing, fragment, destination options, AH, mobility,
    // HIP, shim6): TCP may follow; let user space walk the chain.
    for ext in [0, 43, 44, 51, 60, 135, 139, 140] {
        a.jeq(ext, Label::Accept);
    }
    a.code.push((JEQ_K, Label::Drop, Label::Drop, 0));
    a.mark(tcp);
    if let Some(h) = filter.host {
        let w = words6(h);
        let port = a.label();
        let dst = a.label();
        for (i, word) in w.iter().enumerate() {
            a.op(LD_W_ABS, n + 8 + 4 * i as u32);
            a.jne(*word, dst);
        }
        a.code.push((JEQ_K, port, port, 0));
        a.mark(dst);
        for (i, word) in w.iter().enumerate() {
            a.op(LD_W_ABS, n + 24 + 4 * i as u32);
            a.jne(*word, Label::Drop);
        }
        a.mark(port);
    }
    let pass = pass_label(a, expr);
    ports(a, filter, false, n + 40, pass);
    then_expr(a, pass, expr, Fam::V6(n))
}

/// The filter program for a socket whose packets start with `framing`, keeping TCP packets
/// that pass `filter` and cutting each to `snaplen` bytes.
#[must_use]
pub fn program(framing: Framing, filter: &Filter, snaplen: u32) -> Vec<Insn> {
    // Without an expression the program is small and always fits.
    program_checked(framing, filter, None, snaplen).unwrap_or_default()
}

/// As [`program`], with a filter expression (see [`crate::filter`]) checked after the
/// built-in conditions.
///
/// # Errors
/// When the program does not fit BPF's limits (jump distance, length, scratch memory).
pub fn program_checked(
    framing: Framing,
    filter: &Filter,
    expr: Option<&Expr>,
    snaplen: u32,
) -> Result<Vec<Insn>, &'static str> {
    let mut a = Asm::new();
    match framing {
        Framing::Ethernet => {
            let v4 = a.label();
            let v6 = a.label();
            let vlan = a.label();
            let v4t = a.label();
            let v6t = a.label();
            a.op(LD_H_ABS, 12);
            a.jeq(ETH_IPV4, v4);
            a.jeq(ETH_IPV6, v6);
            for t in ETH_VLAN {
                a.jeq(t, vlan);
            }
            a.code.push((JEQ_K, Label::Drop, Label::Drop, 0));
            a.mark(vlan);
            a.op(LD_H_ABS, 16);
            a.jeq(ETH_IPV4, v4t);
            a.jeq(ETH_IPV6, v6t);
            // A second tag: more than the program follows; user space reads it.
            for t in ETH_VLAN {
                a.jeq(t, Label::Accept);
            }
            a.code.push((JEQ_K, Label::Drop, Label::Drop, 0));
            a.mark(v4);
            ipv4(&mut a, filter, 14, expr)?;
            a.mark(v6);
            ipv6(&mut a, filter, 14, expr)?;
            a.mark(v4t);
            ipv4(&mut a, filter, 18, expr)?;
            a.mark(v6t);
            ipv6(&mut a, filter, 18, expr)?;
        }
        Framing::Ip => {
            let v4 = a.label();
            let v6 = a.label();
            a.op(LD_B_ABS, 0);
            a.op(ALU_AND_K, 0xf0);
            a.jeq(0x40, v4);
            a.jeq(0x60, v6);
            a.code.push((JEQ_K, Label::Drop, Label::Drop, 0));
            a.mark(v4);
            ipv4(&mut a, filter, 0, expr)?;
            a.mark(v6);
            ipv6(&mut a, filter, 0, expr)?;
        }
    }
    a.finish(snaplen)
}

/// Run `prog` over `pkt` the way the kernel does (the instructions kaprobe emits): the number
/// of bytes to keep, 0 to drop. Out-of-bounds loads drop the packet, as in the kernel; `len`
/// is `pkt.len()`.
#[must_use]
pub fn run(prog: &[Insn], pkt: &[u8]) -> u32 {
    run_with_len(prog, pkt, u32::try_from(pkt.len()).unwrap_or(u32::MAX))
}

/// As [`run`], with the packet's length on the wire given (a file's frame may be cut short).
#[must_use]
pub fn run_with_len(prog: &[Insn], pkt: &[u8], wire_len: u32) -> u32 {
    let (mut acc, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |at: u32, width: usize| -> Option<u32> {
        let at = usize::try_from(at).ok()?;
        let b = pkt.get(at..at.checked_add(width)?)?;
        Some(b.iter().fold(0u32, |v, &byte| (v << 8) | u32::from(byte)))
    };
    let width = |code: u16| match code & 0x18 {
        0x00 => 4,
        0x08 => 2,
        _ => 1,
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            op::LD_IMM => acc = i.k,
            op::LD_W_LEN => acc = wire_len,
            LD_W_ABS | LD_H_ABS | LD_B_ABS => match load(i.k, width(i.code)) {
                Some(v) => acc = v,
                None => return 0,
            },
            op::LD_W_IND | LD_H_IND | op::LD_B_IND => {
                match load(x.wrapping_add(i.k), width(i.code)) {
                    Some(v) => acc = v,
                    None => return 0,
                }
            }
            LDX_B_MSH => match load(i.k, 1) {
                Some(v) => x = (v & 0xf) * 4,
                None => return 0,
            },
            op::LDX_MEM => x = mem.get(i.k as usize).copied().unwrap_or(0),
            op::ST => {
                if let Some(m) = mem.get_mut(i.k as usize) {
                    *m = acc;
                }
            }
            op::TAX => x = acc,
            code if code & 0x07 == op::ALU_K => {
                let operand = if code & op::SRC_X != 0 { x } else { i.k };
                acc = match code & 0xf0 {
                    0x00 => acc.wrapping_add(operand),
                    0x10 => acc.wrapping_sub(operand),
                    0x20 => acc.wrapping_mul(operand),
                    // the kernel ends the program (drop) on a division by zero
                    0x30 => match acc.checked_div(operand) {
                        Some(v) => v,
                        None => return 0,
                    },
                    0x40 => acc | operand,
                    0x50 => acc & operand,
                    0x60 => acc.checked_shl(operand).unwrap_or(0),
                    0x70 => acc.checked_shr(operand).unwrap_or(0),
                    0x90 => match acc.checked_rem(operand) {
                        Some(v) => v,
                        None => return 0,
                    },
                    _ => return 0,
                };
            }
            code if code & 0x07 == op::JMP => {
                let operand = if code & op::SRC_X != 0 { x } else { i.k };
                let hit = match code & 0xf0 {
                    0x10 => acc == operand,
                    0x20 => acc > operand,
                    0x30 => acc >= operand,
                    0x40 => acc & operand != 0,
                    _ => return 0,
                };
                pc += usize::from(if hit { i.jt } else { i.jf });
            }
            RET_K => return i.k,
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{ethernet_frame, ip_packet, TcpSpec};
    use std::net::SocketAddr;

    fn spec(src: &str, dst: &str, payload: usize) -> TcpSpec {
        let mut s = TcpSpec::new(
            src.parse::<SocketAddr>().unwrap(),
            dst.parse::<SocketAddr>().unwrap(),
            1000,
            2000,
        );
        s.payload = vec![0x55; payload];
        s
    }

    fn udp4() -> Vec<u8> {
        let mut f = ethernet_frame(&spec("10.0.0.1:5000", "10.0.0.2:53", 20));
        f[14 + 9] = 17;
        f
    }

    fn all() -> Filter {
        Filter::default()
    }

    #[test]
    fn tcp_is_kept_and_cut_to_the_snap_length() {
        let p = program(Framing::Ethernet, &all(), 160);
        assert_eq!(
            run(
                &p,
                &ethernet_frame(&spec("10.0.0.1:5000", "10.0.0.2:80", 1000))
            ),
            160
        );
        assert_eq!(
            run(&p, &ethernet_frame(&spec("[::1]:5000", "[::2]:80", 0))),
            160
        );
    }

    #[test]
    fn udp_icmp_arp_and_fragments_are_dropped_in_the_kernel() {
        let p = program(Framing::Ethernet, &all(), 160);
        assert_eq!(run(&p, &udp4()), 0);
        let mut icmp6 = ethernet_frame(&spec("[::1]:5000", "[::2]:80", 0));
        icmp6[14 + 6] = 58;
        assert_eq!(run(&p, &icmp6), 0);
        let mut arp = udp4();
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(run(&p, &arp), 0);
        let mut frag = ethernet_frame(&spec("10.0.0.1:5000", "10.0.0.2:80", 0));
        frag[14 + 6] = 0x20; // more fragments
        assert_eq!(run(&p, &frag), 0);
    }

    #[test]
    fn ipv6_extension_headers_are_left_to_user_space() {
        let p = program(
            Framing::Ethernet,
            &Filter {
                port: Some(9),
                host: None,
            },
            160,
        );
        let mut hop = ethernet_frame(&spec("[::1]:5000", "[::2]:80", 0));
        hop[14 + 6] = 0;
        assert_eq!(run(&p, &hop), 160);
    }

    #[test]
    fn vlan_tagged_frames_are_followed_one_tag_deep() {
        let p = program(
            Framing::Ethernet,
            &Filter {
                port: Some(80),
                host: None,
            },
            160,
        );
        let plain = ethernet_frame(&spec("10.0.0.1:5000", "10.0.0.2:80", 0));
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(run(&p, &tagged), 160);
        let mut other = tagged.clone();
        other[18 + 20 + 3] = 0x51; // destination port 80 -> 81
        assert_eq!(run(&p, &other), 0);
        let mut qinq = tagged[..16].to_vec();
        qinq.extend_from_slice(&[0x81, 0x00, 0x00, 0x08]);
        qinq.extend_from_slice(&tagged[16..]);
        assert_eq!(
            run(&p, &qinq),
            160,
            "two tags: accepted, user space decides"
        );
    }

    #[test]
    fn port_and_host_are_applied_in_the_kernel() {
        let f = Filter {
            port: Some(8080),
            host: Some("10.0.0.2".parse().unwrap()),
        };
        let p = program(Framing::Ethernet, &f, 128);
        let hit = ethernet_frame(&spec("10.0.0.2:8080", "10.0.0.9:40000", 0));
        let back = ethernet_frame(&spec("10.0.0.9:40000", "10.0.0.2:8080", 0));
        let wrong_port = ethernet_frame(&spec("10.0.0.2:8081", "10.0.0.9:40000", 0));
        let wrong_host = ethernet_frame(&spec("10.0.0.3:8080", "10.0.0.9:40000", 0));
        assert_eq!(run(&p, &hit), 128);
        assert_eq!(run(&p, &back), 128);
        assert_eq!(run(&p, &wrong_port), 0);
        assert_eq!(run(&p, &wrong_host), 0);
        // IPv4 options move the TCP header: the port is still found.
        let six = Filter {
            port: Some(443),
            host: Some("2001:db8::7".parse().unwrap()),
        };
        let p6 = program(Framing::Ethernet, &six, 160);
        assert_eq!(
            run(
                &p6,
                &ethernet_frame(&spec("[2001:db8::1]:5000", "[2001:db8::7]:443", 0))
            ),
            160
        );
        assert_eq!(
            run(
                &p6,
                &ethernet_frame(&spec("[2001:db8::1]:5000", "[2001:db8::8]:443", 0))
            ),
            0
        );
        assert_eq!(
            run(
                &p6,
                &ethernet_frame(&spec("10.0.0.1:5000", "10.0.0.2:443", 0))
            ),
            0,
            "an IPv6 host never matches IPv4"
        );
    }

    #[test]
    fn matches_the_user_space_filter_on_every_crafted_case() {
        use crate::wire::packet::{parse_frame, LinkType};
        let hosts = [
            None,
            Some("127.0.0.1"),
            Some("::1"),
            Some("::ffff:127.0.0.1"),
        ];
        let ports = [None, Some(80), Some(5000)];
        let frames = [
            spec("127.0.0.1:5000", "127.0.0.1:80", 0),
            spec("127.0.0.1:5001", "127.0.0.2:81", 3),
            spec("[::1]:5000", "[::1]:80", 0),
            spec("[::1]:5002", "[::2]:82", 0),
        ];
        for h in hosts {
            for port in ports {
                let f = Filter {
                    port,
                    host: h.map(|s| s.parse().unwrap()),
                };
                for framing in [Framing::Ethernet, Framing::Ip] {
                    let p = program(framing, &f, 160);
                    for s in &frames {
                        let (bytes, link) = match framing {
                            Framing::Ethernet => (ethernet_frame(s), LinkType::Ethernet),
                            Framing::Ip => (ip_packet(s), LinkType::RawIp),
                        };
                        let want = f.matches(&parse_frame(link, &bytes).unwrap());
                        assert_eq!(run(&p, &bytes) > 0, want, "{f:?} {framing:?} {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ipv4_options_shift_the_tcp_header() {
        let f = Filter {
            port: Some(80),
            host: None,
        };
        let p = program(Framing::Ip, &f, 160);
        let mut ip = ip_packet(&spec("10.0.0.1:5000", "10.0.0.2:80", 0));
        // Insert 4 bytes of options (NOPs) and fix IHL and total length.
        let mut opt = ip[..20].to_vec();
        opt.extend_from_slice(&[1, 1, 1, 1]);
        opt.extend_from_slice(&ip[20..]);
        opt[0] = 0x46;
        let tot = u16::from_be_bytes([opt[2], opt[3]]) + 4;
        opt[2..4].copy_from_slice(&tot.to_be_bytes());
        assert_eq!(run(&p, &opt), 160);
        ip[22] = 0;
        ip[23] = 0;
        ip[20] = 0;
        ip[21] = 1;
        assert_eq!(run(&p, &ip), 0);
    }
}

//! Capture filter expressions in the pcap-filter(7) language, as tcpdump takes them:
//! `tcp port 443 and host 10.0.0.5`, `src net 10.0.0.0/8 and not port 22`,
//! `tcp[tcpflags] & (tcp-syn|tcp-fin) != 0`, `portrange 8000-8099`, `greater 100`.
//!
//! An expression is parsed once ([`Expression::parse`]) and compiled into the classic BPF
//! program that `watch` attaches to its socket ([`crate::io::bpf::program`]); `read` runs the
//! same program over each file frame's IP packet ([`Expression::matches_ip`]), so a filter
//! means the same packets live and in a file.
//!
//! The part of the language kept: `host`, `net` (`ADDR/LEN`, dotted prefixes, `mask`),
//! `port`, `portrange`, with `src`, `dst`, `src or dst`, `src and dst`; the protocols `ip`,
//! `ip6`, `tcp` (and `udp`, `icmp`, `icmp6`, `sctp`, which never match: kaprobe analyses TCP
//! only); `greater`, `less`; relations over `len`, `ip[...]`, `ip6[...]`, `tcp[...]` with
//! `+ - * / % & | << >>` and the named constants `tcpflags`, `tcp-fin` ... `tcp-cwr`;
//! `and`/`&&`, `or`/`||`, `not`/`!`, parentheses, and abbreviations (`port 80 or 443`).
//! Host names are not looked up: give addresses. A word outside this is an error naming it
//! and its column.

pub(crate) mod gen;
mod parse;

use std::net::IpAddr;

pub(crate) use gen::gen;

/// A filter expression that did not parse: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.sentence())]
pub struct FilterError {
    /// Column (1-based, in characters) of the bad token.
    pub col: usize,
    /// The bad token ("" at the end of the text).
    pub token: String,
    pub msg: String,
}

impl FilterError {
    fn at(col: usize, token: &str, msg: &str) -> FilterError {
        FilterError {
            col,
            token: token.to_string(),
            msg: msg.to_string(),
        }
    }

    fn sentence(&self) -> String {
        if self.token.is_empty() {
            format!("at column {}: {}", self.col, self.msg)
        } else {
            format!("'{}' at column {} {}", self.token, self.col, self.msg)
        }
    }
}

/// Protocol qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Any,
    Ip,
    Ip6,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Sctp,
}

/// Direction qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
    SrcOrDst,
    SrcAndDst,
}

/// Type qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    Net,
    Port,
    PortRange,
}

/// A primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prim {
    /// `tcp`, `ip6`, ...
    Proto(Proto),
    /// `host A` (a full-length prefix) and `net A/LEN`; `addr` already masked.
    Net {
        proto: Proto,
        dir: Dir,
        addr: IpAddr,
        prefix: u8,
    },
    /// `port N` (lo == hi) and `portrange LO-HI`.
    Port {
        proto: Proto,
        dir: Dir,
        lo: u16,
        hi: u16,
    },
    /// `greater N`: the packet is at least N bytes on the wire.
    Greater(u32),
    /// `less N`: at most N bytes.
    Less(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    And,
    Or,
    Shl,
    Shr,
}

/// An arithmetic value (32-bit unsigned, as in BPF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arith {
    Num(u32),
    /// The packet's length on the wire.
    Len,
    /// `proto[off:size]`: bytes of a header, big-endian.
    Load {
        proto: Proto,
        off: Box<Arith>,
        size: u8,
    },
    Bin(ArOp, Box<Arith>, Box<Arith>),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// The empty expression: every packet.
    True,
    Prim(Prim),
    Rel(RelOp, Arith, Arith),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A filter expression as the user wrote it, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    pub text: String,
    pub expr: Expr,
    /// The program for an IP packet (network header at offset 0), for [`Self::matches_ip`].
    ip_program: Vec<crate::io::bpf::Insn>,
}

impl Expression {
    /// Parse `text` (words joined by spaces, as after `tcpdump -i IFACE`).
    ///
    /// # Errors
    /// A [`FilterError`] naming the bad token and its column.
    pub fn parse(text: &str) -> Result<Expression, FilterError> {
        let expr = parse::parse(text)?;
        let filter = crate::analyze::Filter::default();
        let mut e = Expression {
            text: text.trim().to_string(),
            expr,
            ip_program: Vec::new(),
        };
        let prog = crate::io::bpf::program_checked(
            crate::io::bpf::Framing::Ip,
            &filter,
            Some(&e.expr),
            u32::MAX,
        )
        .map_err(|what| FilterError::at(1, "", what))?;
        // the Ethernet program (four copies of the expression) must fit too
        crate::io::bpf::program_checked(
            crate::io::bpf::Framing::Ethernet,
            &filter,
            Some(&e.expr),
            u32::MAX,
        )
        .map_err(|what| FilterError::at(1, "", what))?;
        e.ip_program = prog;
        Ok(e)
    }

    /// Whether the TCP packet `ip` (starting with its IP header; `wire_len` bytes on the wire
    /// with the link header) passes, exactly as the kernel program would decide.
    #[must_use]
    pub fn matches_ip(&self, ip: &[u8], wire_len: u32) -> bool {
        crate::io::bpf::run_with_len(&self.ip_program, ip, wire_len) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::Filter;
    use crate::craft::{ethernet_frame, TcpSpec};
    use crate::io::bpf::{program_checked, run, Framing};

    fn frame(src: &str, dst: &str, syn: bool) -> Vec<u8> {
        let mut s = TcpSpec::new(src.parse().unwrap(), dst.parse().unwrap(), 1000, 2000);
        if syn {
            s.flags = crate::wire::packet::TcpFlags::SYN;
            s.ack = 0;
        }
        ethernet_frame(&s)
    }

    #[test]
    fn the_kernel_program_keeps_only_what_the_expression_says() {
        let e = Expression::parse("tcp[tcpflags] & tcp-syn != 0 and port 80").unwrap();
        let p = program_checked(Framing::Ethernet, &Filter::default(), Some(&e.expr), 160).unwrap();
        assert_eq!(run(&p, &frame("10.0.0.1:5000", "10.0.0.2:80", true)), 160);
        assert_eq!(run(&p, &frame("10.0.0.1:5000", "10.0.0.2:80", false)), 0);
        assert_eq!(run(&p, &frame("10.0.0.1:5000", "10.0.0.2:81", true)), 0);
        // tcp[...] indexes IPv4 only, as in libpcap
        assert_eq!(run(&p, &frame("[::1]:5000", "[::2]:80", true)), 0);
        let v6 = Expression::parse("ip6 and dst port 80").unwrap();
        let p =
            program_checked(Framing::Ethernet, &Filter::default(), Some(&v6.expr), 160).unwrap();
        assert_eq!(run(&p, &frame("[::1]:5000", "[::2]:80", true)), 160);
        assert_eq!(run(&p, &frame("10.0.0.1:5000", "10.0.0.2:80", true)), 0);
    }
}

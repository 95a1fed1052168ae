//! The filter language's words and grammar: a lexer that keeps each token's column, and a
//! recursive-descent parser with pcap-filter(7)'s precedence (`not` first, then `and` and
//! `or` alike, left to right)
//! and its abbreviations (`port 80 or 443`, `host 10.0.0.1 or 10.0.0.2`).

use std::net::IpAddr;

use super::{ArOp, Arith, Dir, Expr, FilterError, Kind, Prim, Proto, RelOp};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Num(u32),
    /// Text that looks like an address or network (has `.` or `:`, maybe `/len`).
    Addr(String),
    Op(&'static str),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// Column (1-based, in characters) where the token starts.
    col: usize,
    text: String,
}

/// Named constants pcap-filter(7) defines for TCP flags and header offsets.
const NAMED: [(&str, u32); 10] = [
    ("tcpflags", 13),
    ("tcp-fin", 0x01),
    ("tcp-syn", 0x02),
    ("tcp-rst", 0x04),
    ("tcp-push", 0x08),
    ("tcp-ack", 0x10),
    ("tcp-urg", 0x20),
    ("tcp-ece", 0x40),
    ("tcp-cwr", 0x80),
    ("tcp-res", 0x0f00),
];

const OPS: [&str; 20] = [
    "&&", "||", "<<", ">>", "==", "!=", "<=", ">=", "(", ")", "[", "]", ":", "!", "&", "|", "+",
    "-", "*", "/",
];
const OPS1: [&str; 4] = ["%", "=", "<", ">"];

fn lex(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut bracket = 0usize;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let col = i + 1;
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        // Addresses: a run of hex digits, '.', ':' (outside brackets) and '/'.
        if bracket == 0 && (c.is_ascii_hexdigit() || c == ':') {
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_ascii_hexdigit()
                    || chars[j] == '.'
                    || chars[j] == ':'
                    || chars[j] == '/')
            {
                j += 1;
            }
            let run: String = chars[i..j].iter().collect();
            let ends_word =
                j >= chars.len() || !(chars[j].is_ascii_alphanumeric() || chars[j] == '_');
            if (run.contains('.') || run.contains(':')) && ends_word && run != ":" {
                out.push(Token {
                    tok: Tok::Addr(run.clone()),
                    col,
                    text: run,
                });
                i = j;
                continue;
            }
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric()) {
                j += 1;
            }
            let word: String = chars[i..j].iter().collect();
            let n = if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
                u32::from_str_radix(hex, 16).ok()
            } else {
                word.parse::<u32>().ok()
            };
            let Some(n) = n else {
                return Err(FilterError::at(col, &word, "is not a number"));
            };
            out.push(Token {
                tok: Tok::Num(n),
                col,
                text: word,
            });
            i = j;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            // a dotted name (a host name): kept whole, so that it can be refused as one
            if j + 1 < chars.len() && chars[j] == '.' && chars[j + 1].is_ascii_alphanumeric() {
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || chars[j] == '.' || chars[j] == '-')
                {
                    j += 1;
                }
            }
            // hyphenated names: tcp-syn, icmp-echo ...
            let mut word: String = chars[i..j].iter().collect();
            if j < chars.len() && chars[j] == '-' {
                let mut k = j + 1;
                while k < chars.len() && chars[k].is_ascii_alphanumeric() {
                    k += 1;
                }
                let joined: String = chars[i..k].iter().collect();
                if NAMED.iter().any(|(n, _)| *n == joined) {
                    word = joined;
                    j = k;
                }
            }
            out.push(Token {
                tok: Tok::Word(word.to_ascii_lowercase()),
                col,
                text: word,
            });
            i = j;
            continue;
        }
        let op = OPS
            .iter()
            .find(|o| rest.starts_with(**o))
            .or_else(|| OPS1.iter().find(|o| rest.starts_with(**o)));
        let Some(op) = op else {
            return Err(FilterError::at(
                col,
                &c.to_string(),
                "is not part of the filter language",
            ));
        };
        match *op {
            "[" => bracket += 1,
            "]" => bracket = bracket.saturating_sub(1),
            _ => {}
        }
        out.push(Token {
            tok: Tok::Op(op),
            col,
            text: (*op).to_string(),
        });
        i += op.chars().count();
    }
    Ok(out)
}

/// The qualifiers of the last primitive, reused by an abbreviated one (`port 80 or 443`).
#[derive(Debug, Clone, Copy)]
struct Qual {
    proto: Proto,
    dir: Dir,
    kind: Kind,
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    last: Option<Qual>,
    end_col: usize,
    /// Set once a relation's comparison operator was read.
    committed: bool,
}

pub(super) fn parse(text: &str) -> Result<Expr, FilterError> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Ok(Expr::True);
    }
    let mut p = Parser {
        toks,
        pos: 0,
        last: None,
        end_col: text.chars().count() + 1,
        committed: false,
    };
    let e = p.or()?;
    if let Some(t) = p.peek() {
        return Err(FilterError::at(
            t.col,
            &t.text,
            "was not expected here: join primitives with and, or, not",
        ));
    }
    Ok(e)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn word(&self) -> Option<&str> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek().map(|t| &t.tok), Some(Tok::Op(o)) if *o == op)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let hit = self.is_op(op);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn eat_word(&mut self, w: &str) -> bool {
        let hit = self.word() == Some(w);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn err_here(&self, msg: &str) -> FilterError {
        match self.peek() {
            Some(t) => FilterError::at(t.col, &t.text, msg),
            None => FilterError::at(self.end_col, "", &format!("the filter ends early: {msg}")),
        }
    }

    /// `and` and `or` have equal precedence and associate left to right, as in
    /// pcap-filter(7): `a or b and c` is `(a or b) and c`.
    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut e = self.unary()?;
        loop {
            if self.eat_word("and") || self.eat_op("&&") {
                let r = self.unary()?;
                e = Expr::And(Box::new(e), Box::new(r));
            } else if self.eat_word("or") || self.eat_op("||") {
                let r = self.unary()?;
                e = Expr::Or(Box::new(e), Box::new(r));
            } else {
                return Ok(e);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.eat_word("not") || self.eat_op("!") {
            let e = self.unary()?;
            return Ok(Expr::Not(Box::new(e)));
        }
        // A relation (`tcp[13] & 2 != 0`, `(len - 40) > 100`) is tried first; if what follows
        // is not one, it is read again as a boolean group or a primitive.
        let save = self.pos;
        self.committed = false;
        match self.relation() {
            Ok(Some(rel)) => return Ok(rel),
            // a comparison operator was read: the error is in the relation
            Err(e) if self.committed => return Err(e),
            _ => {}
        }
        self.pos = save;
        if self.eat_op("(") {
            let e = self.or()?;
            if !self.eat_op(")") {
                return Err(self.err_here("expected ')'"));
            }
            return Ok(e);
        }
        self.primitive()
    }

    fn relation(&mut self) -> Result<Option<Expr>, FilterError> {
        let l = self.arith()?;
        let op = match self.peek().map(|t| &t.tok) {
            Some(Tok::Op(o)) => match *o {
                "=" | "==" => RelOp::Eq,
                "!=" => RelOp::Ne,
                "<" => RelOp::Lt,
                "<=" => RelOp::Le,
                ">" => RelOp::Gt,
                ">=" => RelOp::Ge,
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        self.pos += 1;
        self.committed = true;
        let r = self.arith()?;
        Ok(Some(Expr::Rel(op, l, r)))
    }

    /// `|` binds loosest, then `&`, then shifts, then `+ -`, then `* / %`.
    fn arith(&mut self) -> Result<Arith, FilterError> {
        self.arith_level(0)
    }

    fn arith_level(&mut self, level: usize) -> Result<Arith, FilterError> {
        const LEVELS: [&[(&str, ArOp)]; 5] = [
            &[("|", ArOp::Or)],
            &[("&", ArOp::And)],
            &[("<<", ArOp::Shl), (">>", ArOp::Shr)],
            &[("+", ArOp::Add), ("-", ArOp::Sub)],
            &[("*", ArOp::Mul), ("/", ArOp::Div), ("%", ArOp::Mod)],
        ];
        if level == LEVELS.len() {
            return self.atom();
        }
        let mut e = self.arith_level(level + 1)?;
        'more: loop {
            for (text, op) in LEVELS[level] {
                if self.is_op(text) {
                    let col = self.peek().map_or(0, |t| t.col);
                    self.pos += 1;
                    let r = self.arith_level(level + 1)?;
                    if matches!(op, ArOp::Div | ArOp::Mod) && r == Arith::Num(0) {
                        return Err(FilterError::at(col, text, "divides by zero"));
                    }
                    e = Arith::Bin(*op, Box::new(e), Box::new(r));
                    continue 'more;
                }
            }
            return Ok(e);
        }
    }

    fn atom(&mut self) -> Result<Arith, FilterError> {
        let Some(t) = self.peek().cloned() else {
            return Err(self.err_here("expected a value"));
        };
        match &t.tok {
            Tok::Num(n) => {
                self.pos += 1;
                Ok(Arith::Num(*n))
            }
            Tok::Op("(") => {
                // `(` may open a boolean group instead (`(tcp[0] > 1 or port 80)`): unless a
                // comparison came before it, failing here lets `unary` read it as one,
                // which reports any error inside again.
                let was = self.committed;
                self.pos += 1;
                let e = self.arith().inspect_err(|_| self.committed = was)?;
                if !self.eat_op(")") {
                    self.committed = was;
                    return Err(self.err_here("expected ')'"));
                }
                Ok(e)
            }
            Tok::Word(w) if w == "len" => {
                self.pos += 1;
                Ok(Arith::Len)
            }
            Tok::Word(w) => {
                if let Some((_, v)) = NAMED.iter().find(|(n, _)| n == w) {
                    self.pos += 1;
                    return Ok(Arith::Num(*v));
                }
                let proto = match w.as_str() {
                    "ip" => Proto::Ip,
                    "ip6" => Proto::Ip6,
                    "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    "icmp" => Proto::Icmp,
                    _ => return Err(FilterError::at(t.col, &t.text, "is not a value")),
                };
                if !matches!(
                    self.toks.get(self.pos + 1).map(|t| &t.tok),
                    Some(Tok::Op("["))
                ) {
                    return Err(FilterError::at(t.col, &t.text, "is not a value"));
                }
                self.pos += 2;
                // `proto[` can only start a relation: errors from here on are its own
                self.committed = true;
                let off = self.arith()?;
                let mut size = 1u8;
                if self.eat_op(":") {
                    size = match self.peek().map(|t| &t.tok) {
                        Some(Tok::Num(n @ (1 | 2 | 4))) => *n as u8,
                        _ => return Err(self.err_here("a load size is 1, 2 or 4")),
                    };
                    self.pos += 1;
                }
                if !self.eat_op("]") {
                    return Err(self.err_here("expected ']'"));
                }
                Ok(Arith::Load {
                    proto,
                    off: Box::new(off),
                    size,
                })
            }
            _ => Err(FilterError::at(t.col, &t.text, "is not a value")),
        }
    }

    fn primitive(&mut self) -> Result<Expr, FilterError> {
        let Some(start) = self.peek().cloned() else {
            return Err(self.err_here("expected a primitive such as host, net, port or tcp"));
        };
        // `greater N`, `less N`
        for (w, greater) in [("greater", true), ("less", false)] {
            if self.eat_word(w) {
                let n = match self.peek().map(|t| &t.tok) {
                    Some(Tok::Num(n)) => *n,
                    _ => return Err(self.err_here(&format!("{w} takes a length in bytes"))),
                };
                self.pos += 1;
                return Ok(Expr::Prim(if greater {
                    Prim::Greater(n)
                } else {
                    Prim::Less(n)
                }));
            }
        }
        // A bare value right after a primitive reuses its qualifiers.
        if matches!(start.tok, Tok::Num(_) | Tok::Addr(_)) {
            let Some(q) = self.last else {
                return Err(FilterError::at(
                    start.col,
                    &start.text,
                    "needs a qualifier: host, net, port or portrange before it",
                ));
            };
            return self.value(q, &start);
        }
        let mut proto = Proto::Any;
        if let Some(p) = self.word().and_then(proto_word) {
            proto = p;
            self.pos += 1;
        }
        let mut dir = Dir::SrcOrDst;
        if self.eat_word("src") {
            dir = Dir::Src;
            if self.word() == Some("or") || self.word() == Some("and") {
                if let Some(Tok::Word(w)) = self.toks.get(self.pos + 1).map(|t| &t.tok) {
                    if w == "dst" {
                        dir = if self.word() == Some("or") {
                            Dir::SrcOrDst
                        } else {
                            Dir::SrcAndDst
                        };
                        self.pos += 2;
                    }
                }
            }
        } else if self.eat_word("dst") {
            dir = Dir::Dst;
        }
        let kind = match self.word() {
            Some("host") => Some(Kind::Host),
            Some("net") => Some(Kind::Net),
            Some("port") => Some(Kind::Port),
            Some("portrange") => Some(Kind::PortRange),
            _ => None,
        };
        let Some(kind) = kind else {
            if proto != Proto::Any && dir == Dir::SrcOrDst {
                // `tcp`, `ip6` ... alone
                return Ok(Expr::Prim(Prim::Proto(proto)));
            }
            if proto != Proto::Any || dir != Dir::SrcOrDst {
                // `src 10.0.0.1`: host is implied
                let Some(t) = self.peek().cloned() else {
                    return Err(self.err_here("expected host, net, port or an address"));
                };
                if matches!(t.tok, Tok::Addr(_)) {
                    let q = Qual {
                        proto,
                        dir,
                        kind: Kind::Host,
                    };
                    return self.value(q, &t);
                }
                return Err(self.err_here("expected host, net, port or portrange"));
            }
            let what = match &start.tok {
                Tok::Word(w) if w == "and" || w == "or" => "needs a primitive before it",
                Tok::Word(_) => "is not a primitive: use host, net, port, portrange, tcp, ip, ip6, greater, less, or a relation such as tcp[tcpflags] & tcp-syn != 0 (host names are not looked up: give an address)",
                _ => "was not expected here",
            };
            return Err(FilterError::at(start.col, &start.text, what));
        };
        self.pos += 1;
        let Some(t) = self.peek().cloned() else {
            return Err(self.err_here("expected a value after it"));
        };
        self.value(Qual { proto, dir, kind }, &t)
    }

    /// The value of a primitive with qualifiers `q`, starting at token `t`.
    fn value(&mut self, q: Qual, t: &Token) -> Result<Expr, FilterError> {
        self.last = Some(q);
        self.pos += 1;
        let Qual { proto, dir, kind } = q;
        let prim = match kind {
            Kind::Host => {
                let addr = match &t.tok {
                    Tok::Addr(a) => a.parse::<IpAddr>().map_err(|_| {
                        FilterError::at(t.col, &t.text, "is not an IPv4 or IPv6 address")
                    })?,
                    _ => {
                        return Err(FilterError::at(
                            t.col,
                            &t.text,
                            "is not an address (host names are not looked up: give an address)",
                        ))
                    }
                };
                Prim::Net {
                    proto,
                    dir,
                    addr,
                    prefix: full(addr),
                }
            }
            Kind::Net => {
                let (Tok::Addr(a) | Tok::Word(a)) = &t.tok else {
                    if let Tok::Num(n) = t.tok {
                        // `net 10`: the first octet
                        let addr = IpAddr::from([
                            u8::try_from(n)
                                .map_err(|_| FilterError::at(t.col, &t.text, "is not a network"))?,
                            0,
                            0,
                            0,
                        ]);
                        return Ok(Expr::Prim(Prim::Net {
                            proto,
                            dir,
                            addr,
                            prefix: 8,
                        }));
                    }
                    return Err(FilterError::at(t.col, &t.text, "is not a network"));
                };
                let (addr, prefix) = net(a).ok_or_else(|| {
                    FilterError::at(
                        t.col,
                        &t.text,
                        "is not a network: use ADDR/LEN, e.g. 10.0.0.0/8 or fd00::/8",
                    )
                })?;
                let prefix = if self.eat_word("mask") {
                    let m = self.peek().cloned();
                    let bits = m.as_ref().and_then(|m| match &m.tok {
                        Tok::Addr(a) => a.parse::<std::net::Ipv4Addr>().ok().and_then(|m| {
                            let v = u32::from(m);
                            (v.leading_ones() + v.trailing_zeros() == 32)
                                .then_some(v.leading_ones() as u8)
                        }),
                        _ => None,
                    });
                    let Some(bits) = bits.filter(|_| addr.is_ipv4()) else {
                        return Err(self.err_here("mask takes an IPv4 netmask such as 255.255.0.0"));
                    };
                    self.pos += 1;
                    bits
                } else {
                    prefix
                };
                Prim::Net {
                    proto,
                    dir,
                    addr: masked(addr, prefix),
                    prefix,
                }
            }
            Kind::Port | Kind::PortRange => {
                let (lo, hi) = match (&t.tok, kind) {
                    (Tok::Num(n), Kind::Port) => {
                        let p = port(*n).ok_or_else(|| {
                            FilterError::at(t.col, &t.text, "is not a port: use 0..=65535")
                        })?;
                        (p, p)
                    }
                    (Tok::Word(w), Kind::Port) => {
                        let p = service(w).ok_or_else(|| {
                            FilterError::at(
                                t.col,
                                &t.text,
                                "is not a port number or a TCP service in /etc/services",
                            )
                        })?;
                        (p, p)
                    }
                    (Tok::Num(a), Kind::PortRange) => {
                        if !self.eat_op("-") {
                            return Err(self.err_here("portrange takes LOW-HIGH, e.g. 8000-8099"));
                        }
                        let b = match self.peek().map(|t| &t.tok) {
                            Some(Tok::Num(b)) => *b,
                            _ => {
                                return Err(
                                    self.err_here("portrange takes LOW-HIGH, e.g. 8000-8099")
                                )
                            }
                        };
                        self.pos += 1;
                        let (Some(a), Some(b)) = (port(*a), port(b)) else {
                            return Err(FilterError::at(
                                t.col,
                                &t.text,
                                "is not a port range within 0..=65535",
                            ));
                        };
                        (a.min(b), a.max(b))
                    }
                    _ => {
                        return Err(FilterError::at(t.col, &t.text, "is not a port"));
                    }
                };
                Prim::Port { proto, dir, lo, hi }
            }
        };
        Ok(Expr::Prim(prim))
    }
}

fn proto_word(w: &str) -> Option<Proto> {
    Some(match w {
        "ip" => Proto::Ip,
        "ip6" => Proto::Ip6,
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        "icmp" => Proto::Icmp,
        "icmp6" => Proto::Icmp6,
        "sctp" => Proto::Sctp,
        _ => return None,
    })
}

fn port(n: u32) -> Option<u16> {
    u16::try_from(n).ok()
}

fn full(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// `10.0.0.0/8`, `fd00::/8`, a whole address, or dotted prefixes (`10`, `10.1`, `10.1.2`).
fn net(text: &str) -> Option<(IpAddr, u8)> {
    if let Some((a, len)) = text.split_once('/') {
        let addr: IpAddr = match a.parse() {
            Ok(x) => x,
            Err(_) => net(a).filter(|(_, p)| *p < 32).map(|(x, _)| x)?,
        };
        let len: u8 = len.parse().ok()?;
        return (len <= full(addr)).then_some((addr, len));
    }
    if let Ok(a) = text.parse::<IpAddr>() {
        return Some((a, full(a)));
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let mut o = [0u8; 4];
    for (i, p) in parts.iter().enumerate() {
        o[i] = p.parse().ok()?;
    }
    Some((IpAddr::from(o), 8 * parts.len() as u8))
}

fn masked(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(v) & m).to_be_bytes())
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(v) & m).to_be_bytes())
        }
    }
}

/// A TCP service name from /etc/services (`http` -> 80).
fn service(name: &str) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|l| {
        let l = l.split('#').next()?;
        let mut f = l.split_whitespace();
        let first = f.next()?;
        let (port, proto) = f.next()?.split_once('/')?;
        let aliases: Vec<&str> = f.collect();
        (proto == "tcp" && (first == name || aliases.contains(&name)))
            .then(|| port.parse().ok())
            .flatten()
    })
}

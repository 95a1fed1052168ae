//! Argument helpers shared by commands: durations, ranges, addresses, the TLS options,
//! the `--metrics` listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::exit::Failure;

/// Parse a duration the way every kaprobe flag does (`75s`, `2h`, `1m30s`, `2.5s`,
/// `250ms`), or a bare number meaning seconds (`5`, `2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kaprobe_sock::fmt::parse_duration(s)
}

/// Parse a `--metrics` listen address (shared with `kaprobe serve`).
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!(
            "'{s}' is not an address to listen on: use IP:PORT, e.g. 127.0.0.1:9464 or [::1]:9464 (port 0 picks a free port)"
        )
    })
}

/// Bind the `--metrics` listener: a bind failure names the flag and the address.
pub fn bind_metrics(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    bind_flag("--metrics", addr)
}

/// `--listen TEXT` parsed (`e.g.` shows a good value) and bound, non-blocking: the listener
/// and the address it got. A malformed address exits 2, one in use 1.
pub fn listen_flag(
    text: &str,
    example: &str,
) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let addr: SocketAddr = text.trim().parse().map_err(|_| {
        Failure::usage(format!(
            "--listen '{text}' is not an address: use IP:PORT, e.g. {example} or [::1]:0"
        ))
    })?;
    let l = bind_flag("--listen", addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr().unwrap_or(addr);
    Ok((l, bound))
}

/// Bind the listener of `flag` (`--metrics`, `--control`): a bind failure names the flag and
/// the address.
pub fn bind_flag(flag: &str, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        Failure::new(
            crate::exit::listen_code(&e),
            format!(
                "{flag} {addr}: cannot listen there: {}",
                kaprobe_sock::fmt::os_error(&e)
            ),
        )
        .into()
    })
}

/// Resolve `HOST:PORT` (`127.0.0.1:8080`, `[::1]:8080`, `localhost:80`) to addresses.
/// A missing or bad port is a usage error (exit 2); a name that does not resolve exits 3.
pub fn resolve_host_port(what: &str, s: &str) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use crate::exit::{Failure, RESOLVE};
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        if a.port() == 0 {
            return Err(Failure::usage(format!(
                "{what} '{s}': port 0 is not a port to connect to: use 1..=65535"
            ))
            .into());
        }
        return Ok(vec![a]);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(Failure::usage(format!(
            "{what} '{s}' has no port: use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
        ))
        .into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(Failure::usage(format!(
                "{what} '{s}': port '{port}' is not a number in 1..=65535"
            ))
            .into())
        }
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Failure::usage(format!("{what} '{s}' has no host: use HOST:PORT")).into());
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': no addresses")).into())
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(Failure::new(RESOLVE, format!("cannot resolve '{host}': {e}")).into()),
    }
}

/// Check a numeric flag against its range: `--flag V is out of range: use A..=B` (exit 2).
pub fn in_range<T>(
    flag: &str,
    v: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, crate::exit::Failure>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(crate::exit::Failure::usage(format!(
            "{flag} {v} is out of range: use {}..={}",
            range.start(),
            range.end()
        )))
    }
}

/// The close log of the long-running commands (`serve`, `middlebox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogArg {
    Text,
    Json,
    /// No close log (for benchmarks).
    Off,
}

/// The TLS options of the HTTP commands (`probe`, `race`): one group, one wording.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Trust the CA certificate(s) in this PEM file instead of the system store (https).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Do not verify the server's certificate (https).
    #[arg(long)]
    pub insecure: bool,
}

impl TlsArgs {
    /// The prober's TLS options.
    pub fn options(&self) -> kaprobe_http::client::TlsOptions {
        kaprobe_http::client::TlsOptions {
            cacert: self.cacert.clone(),
            insecure: self.insecure,
        }
    }
}

/// The filter expression given as the last arguments (`tcp port 443 and host 10.0.0.5`),
/// parsed; None when there is none. A bad one is a usage error pointing at the bad word.
pub fn filter_expression(
    words: &[String],
) -> anyhow::Result<Option<kaprobe_capture::filter::Expression>> {
    if words.is_empty() {
        return Ok(None);
    }
    let text = words.join(" ");
    kaprobe_capture::filter::Expression::parse(&text)
        .map(Some)
        .map_err(|e| Failure::usage(format!("filter expression '{text}': {e}")).into())
}

/// curl's request and connection options, shared by `probe` and `race`: one group, one
/// wording. The library parses and checks each value (`kaprobe_http::client::request`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RequestArgs {
    /// Add a request header, as curl -H: 'Name: value' (repeatable). 'Host: NAME' replaces
    /// the Host header (which upstream an ingress or proxy picks); 'Name:' drops a header
    /// kaprobe sends (User-Agent, Accept); 'Name;' sends it empty.
    #[arg(
        short = 'H',
        long = "header",
        value_name = "'NAME: VALUE'",
        allow_hyphen_values = true
    )]
    pub headers: Vec<String>,

    /// Request method word, as curl -X (e.g. PUT, DELETE, OPTIONS); in race it overrides
    /// --method.
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub request_method: Option<String>,

    /// Send BODY (as curl -d: POST unless -X, Content-Type
    /// application/x-www-form-urlencoded unless -H gives one). @FILE reads FILE, dropping
    /// newlines as curl does; @- reads stdin.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "BODY|@FILE",
        allow_hyphen_values = true
    )]
    pub data: Option<String>,

    /// As --data, but @FILE is sent byte for byte (curl --data-binary).
    #[arg(
        long,
        value_name = "BODY|@FILE",
        conflicts_with = "data",
        allow_hyphen_values = true
    )]
    pub data_binary: Option<String>,

    /// Connect to ADDR for HOST:PORT instead of resolving HOST, as curl --resolve
    /// (repeatable; IPv6 in brackets; several addresses comma-separated). The Host header and
    /// TLS name stay the URL's.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,

    /// Connect to HOST2:PORT2 whenever the URL's host and port are HOST:PORT, as curl
    /// --connect-to (repeatable; empty parts match any / keep the URL's): pin one
    /// load-balancer node or ingress backend. The Host header and TLS name stay the URL's.
    #[arg(long, value_name = "HOST:PORT:HOST2:PORT2")]
    pub connect_to: Vec<String>,
}

impl RequestArgs {
    /// The library's typed options; a bad value is a one-line usage error naming it.
    pub fn options(&self) -> anyhow::Result<kaprobe_http::client::RequestOptions> {
        use kaprobe_http::client::{request, ConnectTo, Header, RequestOptions, Resolve};
        let fail = |e: kaprobe_http::Error| anyhow::Error::from(crate::exit::http_failure(e));
        let body = match (&self.data, &self.data_binary) {
            (Some(d), _) => Some(request::parse_data("--data", d, false).map_err(fail)?),
            (None, Some(d)) => Some(request::parse_data("--data-binary", d, true).map_err(fail)?),
            (None, None) => None,
        };
        Ok(RequestOptions {
            method: self
                .request_method
                .as_deref()
                .map(request::parse_method)
                .transpose()
                .map_err(fail)?,
            headers: self
                .headers
                .iter()
                .map(|h| Header::parse(h))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            body,
            resolve: self
                .resolve
                .iter()
                .map(|r| Resolve::parse(r))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
            connect_to: self
                .connect_to
                .iter()
                .map(|c| ConnectTo::parse(c))
                .collect::<Result<_, _>>()
                .map_err(fail)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
    }

    #[test]
    fn humantime_forms_parse() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
    }

    #[test]
    fn garbage_and_negative_are_rejected_with_the_value() {
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("'soon'"), "{e}");
        let e = parse_duration("-3").unwrap_err();
        assert!(e.contains("'-3'"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn in_range_names_flag_value_and_range() {
        assert_eq!(in_range("--n", 5u32, 1..=10).unwrap(), 5);
        let e = in_range("--n", 0u32, 1..=10).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert_eq!(e.message, "--n 0 is out of range: use 1..=10");
    }
}

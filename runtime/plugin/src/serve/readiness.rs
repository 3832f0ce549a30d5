//! The readiness line: how a plugin process tells its host where it listens. [`serve`]
//! prints it once its listener is bound (and so accepts connections); a host's launcher
//! ([`crate::process`]) reads it:
//!
//! ```text
//! CONNECT_PLUGIN|1|tcp|127.0.0.1:43123|connect
//! ```
//!
//! Fields, separated by `|`: the literal `CONNECT_PLUGIN`, the core protocol version (`1`),
//! the network (`tcp`), the address, and the wire protocol: `connect` (HTTP/1.1 and h2c on
//! one port, as [`serve`] answers; the host speaks h2c), or `connect-http1` for a plugin that
//! answers HTTP/1.1 only (as connect-plugin-go's `Serve` does; the host speaks HTTP/1.1 to
//! it). Other stdout lines before it are forwarded to the host's log and otherwise ignored.
//!
//! This module owns the line's format and the environment variable that tells a process a
//! host launched it; it starts no process and serves nothing.
//!
//! [`serve`]: crate::serve()

use std::io::Write as _;
use std::net::SocketAddr;

/// Environment variable a host sets for the plugins it launches, holding the magic cookie
/// value; such a plugin stops when its stdin closes.
pub const LAUNCHED_ENV: &str = "CONNECT_PLUGIN_LAUNCHED";

pub(crate) const READY_PREFIX: &str = "CONNECT_PLUGIN|1|tcp|";
pub(crate) const READY_SUFFIX: &str = "|connect";
/// The wire protocol field of a plugin that answers HTTP/1.1 only.
const READY_SUFFIX_HTTP1: &str = "|connect-http1";

/// Writes the readiness line for `addr` to stdout and flushes it.
pub(crate) fn announce_ready(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_PREFIX}{addr}{READY_SUFFIX}")?;
    stdout.flush()
}

/// Parses a readiness line; `None` for any other line. (It leaves out whether the plugin
/// answers HTTP/1.1 only: [`parse_ready`] tells.)
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    parse_ready(line).map(|(addr, _)| addr)
}

/// Parses a readiness line: the address, and whether the plugin answers HTTP/1.1 only
/// (`connect-http1`); `None` for any other line.
pub fn parse_ready(line: &str) -> Option<(SocketAddr, bool)> {
    let rest = line.trim_end().strip_prefix(READY_PREFIX)?;
    let (addr, http1) = match rest.strip_suffix(READY_SUFFIX_HTTP1) {
        Some(addr) => (addr, true),
        None => (rest.strip_suffix(READY_SUFFIX)?, false),
    };
    Some((addr.parse().ok()?, http1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_line_round_trip() {
        let addr: SocketAddr = "127.0.0.1:43123".parse().unwrap();
        let line = format!("{READY_PREFIX}{addr}{READY_SUFFIX}\n");
        assert_eq!(line, "CONNECT_PLUGIN|1|tcp|127.0.0.1:43123|connect\n");
        assert_eq!(parse_ready_line(&line), Some(addr));
        assert_eq!(
            parse_ready_line("CONNECT_PLUGIN|2|tcp|127.0.0.1:1|connect"),
            None
        );
        assert_eq!(parse_ready_line("listening on 127.0.0.1:1"), None);
        assert_eq!(
            parse_ready("CONNECT_PLUGIN|1|tcp|127.0.0.1:9|connect-http1"),
            Some(("127.0.0.1:9".parse().unwrap(), true))
        );
        assert_eq!(parse_ready(&line), Some((addr, false)));
        assert_eq!(parse_ready("CONNECT_PLUGIN|1|tcp|127.0.0.1:9|grpc"), None);
        assert_eq!(
            parse_ready_line("CONNECT_PLUGIN|1|tcp|nonsense|connect"),
            None
        );
    }
}

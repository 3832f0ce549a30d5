//! The readiness line: how a plugin process tells its host where it listens. [`serve`]
//! prints it once its listener is bound (and so accepts connections); a host's launcher
//! ([`crate::process`]) reads it:
//!
//! ```text
//! CONNECT_PLUGIN|1|tcp|127.0.0.1:43123|connect
//! ```
//!
//! Fields, separated by `|`: the literal `CONNECT_PLUGIN`, the core protocol version (`1`),
//! the network (`tcp`), the address, and the wire protocol (`connect`). Other stdout lines
//! before it are forwarded to the host's log and otherwise ignored.
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

/// Writes the readiness line for `addr` to stdout and flushes it.
pub(crate) fn announce_ready(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_PREFIX}{addr}{READY_SUFFIX}")?;
    stdout.flush()
}

/// Parses a readiness line; `None` for any other line.
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    line.trim_end()
        .strip_prefix(READY_PREFIX)?
        .strip_suffix(READY_SUFFIX)?
        .parse()
        .ok()
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
            parse_ready_line("CONNECT_PLUGIN|1|tcp|nonsense|connect"),
            None
        );
    }
}

//! Launching plugin processes from a host: [`PluginProcess`].
//!
//! ## The readiness line
//! A plugin process tells its host where it listens by printing one line on stdout once its
//! listener is bound (and so accepts connections):
//!
//! ```text
//! CONNECT_PLUGIN|1|tcp|127.0.0.1:43123|connect
//! ```
//!
//! Fields, separated by `|`: the literal `CONNECT_PLUGIN`, the core protocol version (`1`),
//! the network (`tcp`), the address, and the wire protocol (`connect`). Other stdout lines
//! before it are forwarded to the host's log and otherwise ignored. [`crate::serve`] prints it.
//!
//! ## Lifetime
//! The host keeps the child's stdin open; closing it asks the plugin to shut down gracefully.
//! Since the kernel closes it when the host dies, even by `kill -9`, a plugin served with
//! [`crate::serve`] never outlives its host. Dropping a [`PluginProcess`] kills the child.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use crate::{Code, Error};

/// Environment variable set for launched plugins, holding the magic cookie value.
pub(crate) const LAUNCHED_ENV: &str = "CONNECT_PLUGIN_LAUNCHED";

const READY_PREFIX: &str = "CONNECT_PLUGIN|1|tcp|";
const READY_SUFFIX: &str = "|connect";

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

/// How to start a plugin process.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    start_timeout: Duration,
}

impl LaunchConfig {
    /// Runs `program`; `name` labels the plugin's log lines in the host.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(10),
        }
    }

    /// Adds a command-line argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the child.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long to wait for the readiness line (default 10 s).
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }
}

/// A running plugin process, started by [`PluginProcess::launch`].
#[derive(Debug)]
pub struct PluginProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
}

impl PluginProcess {
    /// Starts the plugin on a free port (`PORT=0`) and waits for its readiness line.
    ///
    /// # Errors
    /// `unavailable` if the program cannot be started, exits early, or does not announce
    /// readiness within the start timeout; the message names the program and what it printed.
    pub async fn launch(config: LaunchConfig) -> Result<Self, Error> {
        let LaunchConfig {
            name,
            program,
            args,
            env,
            start_timeout,
        } = config;
        let mut command = Command::new(&program);
        command
            .args(&args)
            .env("PORT", "0")
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .env(LAUNCHED_ENV, MAGIC_COOKIE_VALUE)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            Error::unavailable(format!(
                "cannot start plugin {name:?} from {}: {e}",
                program.display()
            ))
        })?;
        let stdin = child.stdin.take();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::internal("child process pipes were not created"));
        };
        forward_lines(name.clone(), "stderr", BufReader::new(stderr).lines());
        let mut stdout = BufReader::new(stdout).lines();
        let wait_ready = async {
            while let Some(line) = stdout.next_line().await.transpose() {
                let line = line.map_err(|e| format!("reading its stdout: {e}"))?;
                if let Some(addr) = parse_ready_line(&line) {
                    return Ok(addr);
                }
                tracing::info!(plugin = %name, stream = "stdout", "{line}");
            }
            Err("it closed stdout without printing the readiness line".to_owned())
        };
        let outcome = tokio::time::timeout(start_timeout, wait_ready).await;
        let addr = match outcome {
            Ok(Ok(addr)) => addr,
            Ok(Err(why)) => {
                let status = child.wait().await.ok();
                return Err(Error::unavailable(format!(
                    "plugin {name:?} ({}) did not start: {why}{}",
                    program.display(),
                    status
                        .map(|s| format!("; it exited with {s}"))
                        .unwrap_or_default()
                )));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(Error::new(
                    Code::Unavailable,
                    format!(
                        "plugin {name:?} ({}) did not print its readiness line within {} ms; \
                         plugins must call connect_plugin::serve (or print `{READY_PREFIX}<addr>{READY_SUFFIX}`)",
                        program.display(),
                        start_timeout.as_millis()
                    ),
                ));
            }
        };
        forward_lines(name.clone(), "stdout", stdout);
        Ok(Self {
            name,
            child,
            stdin,
            addr,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the plugin listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to call the plugin at, e.g. `http://127.0.0.1:43123`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the plugin to stop (closes its stdin), waits up to `grace` for it to exit, then
    /// kills it.
    ///
    /// # Errors
    /// `internal` if waiting on the process fails.
    pub async fn shutdown(mut self, grace: Duration) -> Result<ExitStatus, Error> {
        drop(self.stdin.take());
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status
                .map_err(|e| Error::internal(format!("waiting for plugin {:?}: {e}", self.name))),
            Err(_) => {
                tracing::warn!(plugin = %self.name, "did not stop within {} ms; killing it", grace.as_millis());
                self.child
                    .kill()
                    .await
                    .map_err(|e| Error::internal(format!("killing plugin {:?}: {e}", self.name)))?;
                self.child.wait().await.map_err(|e| {
                    Error::internal(format!("waiting for plugin {:?}: {e}", self.name))
                })
            }
        }
    }
}

fn forward_lines<R>(name: String, stream: &'static str, mut lines: tokio::io::Lines<R>)
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(plugin = %name, stream, "{line}");
        }
    });
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

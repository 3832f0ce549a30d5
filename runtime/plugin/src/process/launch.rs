//! Launching plugin processes from a host: [`PluginProcess`] starts a plugin binary, waits for
//! its readiness line ([`crate::serve::readiness`]) and forwards its output to the host's log.
//!
//! ## Lifetime
//! The host keeps the child's stdin open; closing it asks the plugin to shut down gracefully.
//! Since the kernel closes it when the host dies, even by `kill -9`, a plugin served with
//! [`crate::serve()`] never outlives its host. Dropping a [`PluginProcess`] kills the child.
//!
//! Restarting after a crash is [`super::supervise`]'s job; this module starts and stops one
//! process.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, Command};

use crate::log::{escape_control, read_bounded_line};
use crate::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use crate::serve::host_only::{LAUNCH_SECRET_ENV, LAUNCH_SECRET_HEADER};
use crate::serve::readiness::{LAUNCHED_ENV, READY_PREFIX, READY_SUFFIX, parse_ready};
use crate::{Code, Error};

/// How to start a plugin process.
#[derive(Clone)]
pub struct LaunchConfig {
    pub(super) name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    start_timeout: Duration,
    checksum: Option<String>,
    pub(super) restart: RestartPolicy,
    pub(super) on_crash: Option<CrashCallback>,
    /// Whether the plugin answers only this host.
    host_only: bool,
    /// The launch secret, made by [`with_secret`] (kept across a supervisor's restarts).
    pub(super) secret: Option<http::HeaderValue>,
    /// The checked copy of `program` that runs instead of it (set by [`verify_checksum`]).
    verified: Option<Arc<VerifiedCopy>>,
}

/// `config` with a fresh launch secret, unless it answers anyone or already has one.
pub(super) fn with_secret(mut config: LaunchConfig) -> Result<LaunchConfig, Error> {
    if config.host_only && config.secret.is_none() {
        let rng = ring::rand::SystemRandom::new();
        let secret = crate::identity::hex(&crate::identity::random_bytes::<32>(&rng)?);
        let mut secret = http::HeaderValue::from_str(&secret)
            .map_err(|_| Error::internal("a hex launch secret is a valid header value"))?;
        // Kept out of Debug output and logs.
        secret.set_sensitive(true);
        config.secret = Some(secret);
    }
    Ok(config)
}

/// Linux's "text file busy": executing a file that some process has open for writing.
const ETXTBSY: i32 = 26;

type CrashCallback = Arc<dyn Fn(&CrashEvent) + Send + Sync>;

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

/// Whether and how a crashed plugin is started again (by [`SupervisedPlugin`](super::SupervisedPlugin)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// How many restarts in all before giving up (0: never restart).
    pub max_restarts: u32,
    /// The wait before the first restart; it doubles each time.
    pub initial_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
}

impl RestartPolicy {
    /// Never restart (the default).
    pub const fn never() -> Self {
        Self {
            max_restarts: 0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    /// Restart up to `max_restarts` times, waiting `initial_backoff`, then twice as long each
    /// time, at most `max_backoff`.
    pub const fn with_backoff(
        max_restarts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        Self {
            max_restarts,
            initial_backoff,
            max_backoff,
        }
    }

    pub(crate) fn backoff(&self, restart: u32) -> Duration {
        let factor = 2u32.saturating_pow(restart.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self::never()
    }
}

/// What [`LaunchConfig::on_crash`] is told when a plugin process exits unasked.
#[derive(Debug, Clone)]
pub struct CrashEvent {
    /// The plugin's name.
    pub plugin: String,
    /// How the process ended, if known.
    pub status: Option<ExitStatus>,
    /// Restarts so far, this one not counted.
    pub restarts: u32,
    /// Whether the restart policy will start it again.
    pub will_restart: bool,
}

impl LaunchConfig {
    /// Runs `program`; `name` labels the plugin's log lines in the host.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            start_timeout: Duration::from_secs(10),
            checksum: None,
            restart: RestartPolicy::never(),
            on_crash: None,
            host_only: true,
            secret: None,
            verified: None,
        }
    }

    /// Refuses to start the program unless its SHA-256 is `sha256_hex` (64 hex digits), as
    /// go-plugin's `SecureConfig` does. The checked bytes are what runs: they are copied to a
    /// directory only this user can write, and the copy is started, so replacing the file at
    /// the original path between the check and the start changes nothing.
    #[must_use]
    pub fn checksum(mut self, sha256_hex: impl Into<String>) -> Self {
        self.checksum = Some(sha256_hex.into().to_ascii_lowercase());
        self
    }

    /// What to do when the process crashes (used by [`SupervisedPlugin`](super::SupervisedPlugin)).
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The restart policy set with [`LaunchConfig::restart`].
    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart
    }

    /// Tells the crash callback, if any, of `event`.
    pub(crate) fn report_crash(&self, event: &CrashEvent) {
        if let Some(on_crash) = &self.on_crash {
            on_crash(event);
        }
    }

    /// Called whenever the process exits unasked (used by [`SupervisedPlugin`](super::SupervisedPlugin)).
    #[must_use]
    pub fn on_crash(mut self, callback: impl Fn(&CrashEvent) + Send + Sync + 'static) -> Self {
        self.on_crash = Some(Arc::new(callback));
        self
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

    /// Does not pass this host's environment variable `key` on to the plugin (for secrets the
    /// host holds, such as operators' join tokens). A host's own join token
    /// (`CONNECT_PLUGIN_JOIN_TOKEN`) is never passed on; the plugin gets its own with
    /// [`LaunchConfig::env`].
    #[must_use]
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Lets the plugin answer calls from anyone, not only this host. By default each start
    /// gets a fresh launch secret (see [`crate::serve::host_only`]) and a plugin served with
    /// [`crate::serve()`] refuses calls without it; this turns that off, for a plugin that
    /// other software must call directly (a peer written in another language, a test tool).
    #[must_use]
    pub fn answer_anyone(mut self) -> Self {
        self.host_only = false;
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
    /// Whether it answers HTTP/1.1 only (its readiness line said `connect-http1`).
    http1: bool,
    /// The secret calls to this process must carry (none with `answer_anyone`).
    secret: Option<http::HeaderValue>,
}

impl PluginProcess {
    /// Starts the plugin on a free port (`PORT=0`) and waits for its readiness line.
    ///
    /// # Errors
    /// `unavailable` if the program cannot be started, exits early, or does not announce
    /// readiness within the start timeout; the message names the program and what it printed.
    pub async fn launch(config: LaunchConfig) -> Result<Self, Error> {
        // The checked copy may go once the child has started: it runs from its own inode.
        let config = with_secret(verify_checksum(config)?)?;
        Self::spawn(&config, 0).await
    }

    pub(super) async fn spawn(config: &LaunchConfig, port: u16) -> Result<Self, Error> {
        let name = config.name.clone();
        let program = &config.program;
        let start_timeout = config.start_timeout;
        let runs = config
            .verified
            .as_ref()
            .map_or(program, |copy| &copy.program);
        let mut command = Command::new(runs);
        command
            .args(&config.args)
            .env("PORT", port.to_string())
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .env(LAUNCHED_ENV, MAGIC_COOKIE_VALUE)
            // This process's own join token and launch secret are its alone.
            .env_remove(crate::handshake::JOIN_TOKEN_ENV)
            .env_remove(LAUNCH_SECRET_ENV);
        for key in &config.env_remove {
            command.env_remove(key);
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        let secret = config.secret.clone();
        if let Some(secret) = &secret {
            command.env(
                LAUNCH_SECRET_ENV,
                std::ffi::OsStr::from_bytes(secret.as_bytes()),
            );
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // ETXTBSY: another thread's fork may briefly hold a just-written copy open for writing.
        let mut tries = 0;
        let spawned = loop {
            match command.spawn() {
                Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other,
            }
        };
        let mut child = spawned.map_err(|e| {
            Error::unavailable(format!(
                "cannot start plugin {name:?} from {}: {e}",
                program.display()
            ))
        })?;
        let stdin = child.stdin.take();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::internal("child process pipes were not created"));
        };
        forward_lines(name.clone(), "stderr", BufReader::new(stderr));
        let mut stdout = BufReader::new(stdout);
        let wait_ready = async {
            while let Some(line) = read_bounded_line(&mut stdout).await {
                if let Some(ready) = parse_ready(&line) {
                    return Ok(ready);
                }
                let line = escape_control(&line);
                tracing::info!(plugin = %name, stream = "stdout", "{line}");
            }
            Err("it closed stdout without printing the readiness line".to_owned())
        };
        let outcome = tokio::time::timeout(start_timeout, wait_ready).await;
        let (addr, http1) = match outcome {
            Ok(Ok((addr, http1))) => (Ok(addr), http1),
            Ok(Err(why)) => (Err(Ok(why)), false),
            Err(elapsed) => (Err(Err(elapsed)), false),
        };
        let addr = match addr {
            // A child runs on this machine: the host reaches it over loopback, never at an
            // address the child merely names (that would point the host's calls elsewhere).
            Ok(addr) if addr.ip().is_unspecified() => {
                let loopback = match addr {
                    SocketAddr::V4(_) => std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                    SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                };
                SocketAddr::new(loopback, addr.port())
            }
            Ok(addr) if addr.ip().is_loopback() => addr,
            Ok(addr) => {
                let _ = child.kill().await;
                return Err(Error::unavailable(format!(
                    "plugin {name:?} ({}) announced {addr}, which is not a loopback address: a \
                     launched plugin must listen on 127.0.0.1, ::1 or every interface \
                     (LISTEN_HOST), so the host reaches it on this machine",
                    program.display()
                )));
            }
            Err(Ok(why)) => {
                let status = child.wait().await.ok();
                return Err(Error::unavailable(format!(
                    "plugin {name:?} ({}) did not start: {why}{}",
                    program.display(),
                    status
                        .map(|s| format!("; it exited with {s}"))
                        .unwrap_or_default()
                )));
            }
            Err(Err(_)) => {
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
            http1,
            secret,
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

    /// The launch secret this host's calls to the plugin carry (header
    /// [`LAUNCH_SECRET_HEADER`]); `None` if launched with [`LaunchConfig::answer_anyone`].
    /// Keep it to this host: whoever holds it can call the plugin.
    pub fn launch_secret(&self) -> Option<&http::HeaderValue> {
        self.secret.as_ref()
    }

    /// A channel to the plugin that carries the launch secret on every call.
    ///
    /// # Errors
    /// `invalid_argument` never in practice (the endpoint is a valid URL).
    pub fn channel(&self) -> Result<crate::Channel, Error> {
        self.channel_builder().build()
    }

    /// A channel builder for the plugin, with the launch secret set, to adjust further
    /// (timeouts, codec) before building.
    pub fn channel_builder(&self) -> crate::rpc::ChannelBuilder {
        let mut builder = crate::Channel::builder(self.endpoint());
        if self.http1 {
            builder = builder.http_version(crate::rpc::HttpVersion::Http1);
        }
        match &self.secret {
            Some(secret) => builder.header(
                http::HeaderName::from_static(LAUNCH_SECRET_HEADER),
                secret.clone(),
            ),
            None => builder,
        }
    }

    /// A [`ClientConfig`](crate::ClientConfig) for the plugin (handshake, dispense) that
    /// carries the launch secret on every call.
    pub fn client_config(&self) -> crate::ClientConfig {
        let mut config = crate::ClientConfig::new(self.endpoint());
        if self.http1 {
            config = config.channel(|c| c.http_version(crate::rpc::HttpVersion::Http1));
        }
        match &self.secret {
            Some(secret) => config.launch_secret(secret.clone()),
            None => config,
        }
    }

    /// Whether the plugin answers HTTP/1.1 only (it announced `connect-http1`): the host's
    /// channels to it speak HTTP/1.1.
    pub fn http1_only(&self) -> bool {
        self.http1
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().await.ok()
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

/// Checks `config`'s program against its checksum, if it has one, and returns the config set
/// to run a private copy of the checked bytes (see [`LaunchConfig::checksum`]).
pub(super) fn verify_checksum(mut config: LaunchConfig) -> Result<LaunchConfig, Error> {
    let Some(expected) = &config.checksum else {
        return Ok(config);
    };
    if config.verified.is_some() {
        return Ok(config);
    }
    let bytes = std::fs::read(&config.program).map_err(|e| {
        Error::unavailable(format!(
            "cannot read plugin {:?} at {} to check its checksum: {e}",
            config.name,
            config.program.display()
        ))
    })?;
    let actual = crate::identity::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    if !crate::identity::constant_time_eq(actual.as_bytes(), expected.as_bytes()) {
        return Err(Error::new(
            Code::PermissionDenied,
            format!(
                "checksum mismatch for plugin {:?} at {}: expected sha256 {expected}, got {actual}; refusing to run it",
                config.name,
                config.program.display()
            ),
        ));
    }
    let copy = VerifiedCopy::write(&config.name, &config.program, &bytes)?;
    config.verified = Some(Arc::new(copy));
    Ok(config)
}

/// A checked plugin binary, copied into a fresh directory that only this user can enter; both
/// are removed when the last launch config holding it is dropped.
#[derive(Debug)]
struct VerifiedCopy {
    dir: PathBuf,
    program: PathBuf,
}

impl VerifiedCopy {
    fn write(name: &str, original: &std::path::Path, bytes: &[u8]) -> Result<Self, Error> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

        let failed = |what: &str, e: std::io::Error| {
            Error::unavailable(format!(
                "cannot prepare the checked copy of plugin {name:?} ({}): {what}: {e}",
                original.display()
            ))
        };
        let rng = ring::rand::SystemRandom::new();
        let suffix = crate::identity::hex(&crate::identity::random_bytes::<8>(&rng)?);
        let dir = std::env::temp_dir().join(format!("connect-plugin-{suffix}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed("creating its directory", e))?;
        let copy = Self {
            program: dir.join(
                original
                    .file_name()
                    .unwrap_or(std::ffi::OsStr::new("plugin")),
            ),
            dir,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&copy.program)
            .map_err(|e| failed("creating it", e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| failed("writing it", e))?;
        Ok(copy)
    }
}

impl Drop for VerifiedCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn forward_lines<R>(name: String, stream: &'static str, mut reader: R)
where
    R: tokio::io::AsyncBufRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(line) = read_bounded_line(&mut reader).await {
            let line = escape_control(&line);
            tracing::info!(plugin = %name, stream, "{line}");
        }
    });
}

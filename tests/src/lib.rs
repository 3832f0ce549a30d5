//! Helpers shared by the end-to-end tests: locating the repository and the pinned Node tools,
//! launching the example plugins, and speaking raw HTTP/1.1 for bad-input tests.

/// The generator's golden output (protoc-gen-connect-plugin/tests/golden), compiled here so a
/// change that produces code which does not build fails the build, and served in
/// `tests/golden.rs` so code that builds but misbehaves fails a test.
#[path = "../../protoc-gen-connect-plugin/tests/golden/mod.rs"]
pub mod fixtures;

#[path = "gen/mod.rs"]
mod interop_proto;

pub mod interop;

use std::path::{Path, PathBuf};
use std::time::Duration;

use connect_plugin::{LaunchConfig, PluginProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// A tool from the pinned Node packages (`node_modules/.bin/<name>`). Fails the test, with
/// the fix, when the packages are not installed: interop tests never skip quietly.
pub fn node_tool(name: &str) -> PathBuf {
    let path = repo_root().join("node_modules/.bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: the interop tests need the pinned Node packages. Run `npm ci` in {} \
         (scripts/test.sh does this for you).",
        path.display(),
        repo_root().display()
    );
    path
}

/// The `node` executable, checked to exist.
pub fn node() -> PathBuf {
    node_tool("buf"); // also proves `npm ci` ran, so the connect-node packages are there
    PathBuf::from("node")
}

/// A connect-node server (tests/interop/server.mjs: the KV and interop services) as a child
/// process over HTTP/`http` ("1.1" or "2"); it exits when dropped (its stdin closes).
pub struct NodeServer {
    _child: tokio::process::Child,
    /// Its base URL.
    pub url: String,
}

/// Starts a connect-node server and waits for the port it announces.
pub async fn start_node_server(http: &str) -> NodeServer {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(node())
        .arg(repo_root().join("tests/interop/server.mjs"))
        .arg(http)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the node server announces its port within 30 s")
        .expect("reading its stdout")
        .expect("a LISTENING line");
    let port = line.strip_prefix("LISTENING ").expect("LISTENING <port>");
    NodeServer {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Launches the example KV plugin as a real child process on a free port. It answers only
/// calls carrying its launch secret (`PluginProcess::channel`).
pub async fn launch_kv_plugin(kv_plugin_bin: &str) -> PluginProcess {
    PluginProcess::launch(
        LaunchConfig::new("kv", kv_plugin_bin).start_timeout(Duration::from_secs(20)),
    )
    .await
    .expect("kv-plugin starts and prints its readiness line")
}

/// [`launch_kv_plugin`] with `LaunchConfig::answer_anyone`: for protocol tests whose peers
/// (raw sockets, other Connect implementations, the routing gateway for a provider this host
/// did not launch) do not carry a launch secret.
pub async fn launch_kv_plugin_for_anyone(kv_plugin_bin: &str) -> PluginProcess {
    PluginProcess::launch(
        LaunchConfig::new("kv", kv_plugin_bin)
            .start_timeout(Duration::from_secs(20))
            .answer_anyone(),
    )
    .await
    .expect("kv-plugin starts and prints its readiness line")
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines as (lower-cased name, value).
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with the given headers and body as raw bytes over a fresh TCP
/// connection, and reads the whole response. Nothing between the test and the server can
/// "fix" malformed input.
pub async fn raw_http1(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers and closes within 10 s")
        .expect("read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A TCP forwarder to `target` that counts the connections it accepts: its address, and the
/// count (how many connections a client really opened).
pub async fn counting_forwarder(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let front = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = front.local_addr().expect("local addr");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (addr, accepted)
}

/// Registers `provider` with its host as a provider of "interop" served at `base_url`.
pub async fn register_interop(provider: &connect_plugin::Client, base_url: String) {
    use connect_plugin::proto::connectplugin::v1::RegisterServiceRequest;

    let registration = RegisterServiceRequest {
        service_type: "interop".into(),
        version: "1.0.0".into(),
        endpoint_path: "/interop.v1.InteropService/".into(),
        metadata: [("base_url".to_owned(), base_url)].into(),
    };
    provider
        .registry()
        .register_service(
            provider
                .authenticated(registration)
                .await
                .expect("identity"),
        )
        .await
        .expect("registered");
}

/// A service registry whose host lets anyone with the magic cookie join and declare what it
/// provides (connect-plugin-go's behaviour, off by default): for tests of other features
/// whose in-process plugins have no launching host to hand them a join token.
pub fn open_registry() -> connect_plugin::ServiceRegistry {
    let registry = connect_plugin::ServiceRegistry::new();
    registry.join_policy().set_open(true);
    registry
}

/// [`open_registry`] with a lease.
pub fn open_registry_with_lease(lease: std::time::Duration) -> connect_plugin::ServiceRegistry {
    let registry = connect_plugin::ServiceRegistry::with_lease(lease);
    registry.join_policy().set_open(true);
    registry
}

/// Serves a host with `registry` on a free loopback port; its URL.
pub async fn serve_registry(registry: &connect_plugin::ServiceRegistry) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(connect_plugin::serve(
        connect_plugin::ServeConfig::new()
            .registry(registry.clone())
            .listener(listener),
    ));
    url
}

/// A platform spec for an example plugin: `name` runs `binary`, provides `provides` at
/// 0.1.0 and needs `requires` (if any) to start.
pub fn plugin_spec(
    name: &str,
    binary: &str,
    provides: &str,
    requires: Option<&str>,
) -> connect_plugin::host::platform::PluginSpec {
    connect_plugin::host::platform::PluginSpec {
        name: name.into(),
        launch: LaunchConfig::new(name, binary),
        provides: vec![(provides.into(), "0.1.0".into())],
        requires: requires
            .map(|r| connect_plugin::plugin::ServiceDependency {
                service_type: r.into(),
                min_version: String::new(),
                required_for_startup: true,
                watch_for_changes: true,
            })
            .into_iter()
            .collect(),
        managed: false,
    }
}

/// Kills process `pid` with SIGKILL.
pub fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid}");
}

/// Registers a provider of "kv" (self id "kv-provider", open joining) with the host at
/// `host_url`, served at `base_url`; its client.
pub async fn register_kv_provider(host_url: &str, base_url: String) -> connect_plugin::Client {
    use connect_plugin::proto::connectplugin::v1::RegisterServiceRequest;
    let provider = connect_plugin::Client::new(
        connect_plugin::ClientConfig::new(host_url)
            .self_id("kv-provider", "1.0.0")
            .provides(["kv"]),
    )
    .expect("client");
    provider
        .register(RegisterServiceRequest {
            service_type: "kv".into(),
            version: "1.0.0".into(),
            endpoint_path: "/kv.v1.KVService/".into(),
            metadata: [("base_url".to_owned(), base_url)].into(),
        })
        .await
        .expect("registered");
    provider
}

/// A host with a registry on a loopback address that can be restarted there, as a new
/// process that knows nothing of the plugins the old one had.
pub struct RestartableHost {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its URL.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), connect_plugin::Error>>>,
}

impl RestartableHost {
    /// Serves `registry` on a free port (one no other test is handed while it is free).
    pub async fn start(registry: &connect_plugin::ServiceRegistry) -> Self {
        let listener = listen_on_a_stable_port().await;
        let addr = listener.local_addr().expect("local addr");
        let mut host = Self {
            addr,
            url: format!("http://{addr}"),
            stop: None,
            task: None,
        };
        host.serve(registry, listener);
        host
    }

    fn serve(
        &mut self,
        registry: &connect_plugin::ServiceRegistry,
        listener: tokio::net::TcpListener,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(connect_plugin::serve(
            connect_plugin::ServeConfig::new()
                .registry(registry.clone())
                .listener(listener)
                .shutdown_timeout(Duration::from_millis(200))
                .stop_signal(async {
                    let _ = stopped.await;
                }),
        )));
    }

    /// Stops the host (its calls drained) and serves `registry` on the same address.
    pub async fn restart(&mut self, registry: &connect_plugin::ServiceRegistry) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("the host task")
                .expect("the host stopped cleanly");
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the address is free again");
        self.serve(registry, listener);
    }
}

/// The Go peer (`tests/go/cmd/peer`: connect-go servers and clients, and plugin-system peers
/// written with connect-go), built by `scripts/test.sh`. Fails, never skips, when it is
/// missing.
pub fn go_peer() -> PathBuf {
    let path = repo_root().join("target/go-tools/go-peer");
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds it (cd tests/go && go build -o ../../target/go-tools/go-peer ./cmd/peer)",
        path.display()
    );
    path
}

/// A running Go peer: its process (killed on drop) and the lines it printed so far.
pub struct GoPeer {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl GoPeer {
    /// Starts `go-peer <args>` with `env`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(go_peer())
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the Go peer starts");
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// Waits (up to 20 s) for a line starting with `prefix`; the rest of it.
    pub async fn line(&mut self, prefix: &str) -> String {
        let wait = async {
            while let Some(line) = self.lines.next_line().await.expect("reading the Go peer") {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
                println!("go-peer: {line}");
            }
            panic!("the Go peer ended without printing {prefix:?}");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("the Go peer printed no {prefix:?} within 20 s"))
    }

    /// Stops it (closes its stdin, then kills it).
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

/// Runs `go-peer <args>` to completion and checks that it printed `OK <n> checks`; `n`.
pub async fn run_go_client(args: &[&str]) -> usize {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(go_peer()).args(args).output(),
    )
    .await
    .expect("the Go client ends within 2 minutes")
    .expect("the Go client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "go-peer {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("OK ")?.strip_suffix(" checks")?.parse().ok())
        .unwrap_or_else(|| panic!("go-peer {args:?} printed no OK line:\n{stdout}"))
}

/// A loopback listener on a port below the kernel's ephemeral range (Linux: 32768 and up),
/// for a test that stops a server and starts another on the same address: no other test's
/// `bind(":0")` can take the port while it is free. Ports are tried from a random start.
pub async fn listen_on_a_stable_port() -> tokio::net::TcpListener {
    use std::hash::BuildHasher as _;
    let start = std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        as usize
        % 10_000;
    for i in 0..10_000 {
        let port = 20_000 + ((start + i) % 10_000) as u16;
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    panic!("no free port between 20000 and 29999 on 127.0.0.1");
}

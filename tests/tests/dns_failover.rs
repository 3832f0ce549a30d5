//! Reliability issue: failover discovery over DNS, against a real DNS server (dnsmasq,
//! installed by scripts/test.sh) publishing SRV and A records on loopback, as a headless
//! Kubernetes Service would.

use std::net::SocketAddr;
use std::time::Duration;

use connect_plugin::Code;
use connect_plugin::client::discovery::{Discovery, DnsDiscovery, failover_channel};
use connect_plugin::rpc::Server;
use connect_plugin::rpc::policy::CircuitBreaker;
use connect_plugin_tests::interop::{InteropServicePlugin, InteropServiceServer, Named, Payload};

/// The dnsmasq binary; fails (never skips) when it is missing.
fn dnsmasq() -> &'static str {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "dnsmasq is missing: the DNS discovery tests need it. scripts/test.sh installs it \
             (apt-get install dnsmasq-base)",
        )
}

/// Serves `Named(name)` until `stop` fires; its address.
async fn serve_named(name: &'static str) -> (tokio::sync::oneshot::Sender<()>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new()
        .shutdown_timeout(Duration::from_millis(100))
        .add_service(InteropServiceServer::new(Named(name)).into_service());
    tokio::spawn(async move {
        let _ = server
            .serve_with_shutdown(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    (stop, addr)
}

#[tokio::test]
async fn calls_fail_over_between_the_providers_dns_publishes() {
    let (stop_a, a) = serve_named("a").await;
    let (_stop_b, b) = serve_named("b").await;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _dns = tokio::process::Command::new(dnsmasq())
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            &format!("--port={port}"),
            // a is preferred (priority 0); b backs it up (priority 10).
            &format!(
                "--srv-host=_echo._tcp.test.internal,a.test.internal,{},0,10",
                a.port()
            ),
            &format!(
                "--srv-host=_echo._tcp.test.internal,b.test.internal,{},10,10",
                b.port()
            ),
            "--host-record=a.test.internal,127.0.0.1",
            "--host-record=b.test.internal,127.0.0.1",
            // Its own domain: unknown names in it are answered "no such name".
            "--local=/test.internal/",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq starts");
    let dns = DnsDiscovery::new(SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_millis(300));

    // Once the server answers: both providers, a preferred; and plain A records too.
    let started = std::time::Instant::now();
    let endpoints = loop {
        match dns.discover("_echo._tcp.test.internal").await {
            Ok(endpoints) => break endpoints,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "dnsmasq answers: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut urls: Vec<(u32, String)> = endpoints
        .iter()
        .map(|e| (e.weight, e.url.clone()))
        .collect();
    urls.sort();
    assert_eq!(
        urls.iter().map(|(_, url)| url.clone()).collect::<Vec<_>>(),
        [
            format!("http://127.0.0.1:{}", b.port()),
            format!("http://127.0.0.1:{}", a.port())
        ],
        "b weighs less (a higher priority number)"
    );
    let plain = dns
        .discover(&format!("a.test.internal:{}", a.port()))
        .await
        .unwrap();
    assert_eq!(plain[0].url, format!("http://127.0.0.1:{}", a.port()));
    let err = dns.discover("_none._tcp.test.internal").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // Calls go to a, and to b once a is gone, without failing.
    let channel = failover_channel(
        &dns,
        "_echo._tcp.test.internal",
        |e| e.wrap(CircuitBreaker::new()),
        |c| c,
    )
    .await
    .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    let name = || {
        let client = client.clone();
        async move {
            client
                .unary(Payload::default())
                .await
                .map(|r| r.into_message().text)
        }
    };
    assert_eq!(name().await.unwrap(), "a");
    stop_a.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(name().await.unwrap(), "b", "failed over to the backup");
}

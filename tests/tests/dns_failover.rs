//! Reliability issue: failover discovery over DNS, against a real DNS server (dnsmasq,
//! installed by scripts/test.sh) publishing SRV and A records on loopback, as a headless
//! Kubernetes Service would.

use std::net::SocketAddr;
use std::time::Duration;

use connect_plugin::Code;
use connect_plugin::client::discovery::{Discovery, DnsDiscovery, failover_channel};
use connect_plugin::rpc::policy::CircuitBreaker;
use connect_plugin_tests::interop::{InteropServicePlugin, answered_by, serve_named};

/// Any free loopback port.
fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

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

/// dnsmasq on loopback `port`, publishing `_echo._tcp.test.internal` at each `(name, port,
/// priority)` (all names at 127.0.0.1).
fn publish(port: u16, providers: &[(&str, u16, u16)]) -> tokio::process::Child {
    let mut args = vec![
        "--keep-in-foreground".to_owned(),
        "--no-resolv".to_owned(),
        "--no-hosts".to_owned(),
        "--bind-interfaces".to_owned(),
        "--listen-address=127.0.0.1".to_owned(),
        "--user=root".to_owned(),
        // No pidfile: several instances run at once.
        "--pid-file=".to_owned(),
        format!("--port={port}"),
        // Its own domain: unknown names in it are answered "no such name".
        "--local=/test.internal/".to_owned(),
    ];
    for (name, provider_port, priority) in providers {
        args.push(format!(
            "--srv-host=_echo._tcp.test.internal,{name}.test.internal,{provider_port},{priority},10"
        ));
        args.push(format!("--host-record={name}.test.internal,127.0.0.1"));
    }
    tokio::process::Command::new(dnsmasq())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq starts")
}

/// Panics with dnsmasq's own words if it has exited.
async fn still_running(server: &mut tokio::process::Child) {
    use tokio::io::AsyncReadExt;
    if let Ok(Some(status)) = server.try_wait() {
        let mut said = String::new();
        if let Some(mut stderr) = server.stderr.take() {
            let _ = stderr.read_to_string(&mut said).await;
        }
        panic!("dnsmasq exited ({status}): {said}");
    }
}

/// A loopback port free for both UDP and TCP (dnsmasq serves DNS on both).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until `dns` (served by `server`) answers for the echo service; what it answered.
async fn answered(
    dns: &DnsDiscovery,
    server: &mut tokio::process::Child,
) -> Vec<connect_plugin::client::discovery::Endpoint> {
    let started = std::time::Instant::now();
    loop {
        match dns.discover("_echo._tcp.test.internal").await {
            Ok(endpoints) => return endpoints,
            Err(error) => {
                still_running(server).await;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "dnsmasq answers: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_refreshing_channel_follows_what_dns_publishes() {
    use connect_plugin::client::discovery::refreshing_failover_channel;

    let (stop_a, a, _) = serve_named("a", any()).await;
    let (_stop_b, b, _) = serve_named("b", any()).await;
    let port = free_port();
    let mut dns_server = publish(port, &[("a", a.port(), 0)]);
    let dns = DnsDiscovery::new(SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_millis(300));
    assert_eq!(answered(&dns, &mut dns_server).await.len(), 1);
    let channel = refreshing_failover_channel(
        std::sync::Arc::new(dns.clone()),
        "_echo._tcp.test.internal",
        Duration::from_millis(100),
        |e| e.wrap(CircuitBreaker::new()),
        |c| c,
    )
    .await
    .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    assert_eq!(answered_by(&client).await.unwrap(), "a");

    // DNS now publishes b instead of a (a is retired): the channel follows within a refresh.
    dns_server.kill().await.unwrap(); // and waited for, so its port is free again
    let mut dns_server = publish(port, &[("b", b.port(), 0)]);
    assert!(
        answered(&dns, &mut dns_server).await[0]
            .url
            .ends_with(&b.port().to_string())
    );
    stop_a.send(()).unwrap();
    let started = std::time::Instant::now();
    loop {
        if answered_by(&client).await.is_ok_and(|n| n == "b") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the channel follows the new records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn calls_fail_over_between_the_providers_dns_publishes() {
    let (stop_a, a, _) = serve_named("a", any()).await;
    let (_stop_b, b, _) = serve_named("b", any()).await;
    let port = free_port();
    // a is preferred (priority 0); b backs it up (priority 10).
    let mut dns_server = publish(port, &[("a", a.port(), 0), ("b", b.port(), 10)]);
    let dns = DnsDiscovery::new(SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_millis(300));
    // Once the server answers: both providers, a preferred; and plain A records too.
    let endpoints = answered(&dns, &mut dns_server).await;
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
    assert_eq!(answered_by(&client).await.unwrap(), "a");
    stop_a.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        answered_by(&client).await.unwrap(),
        "b",
        "failed over to the backup"
    );
}

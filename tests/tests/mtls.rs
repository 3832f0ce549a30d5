//! Abuse suite (security issue, TLS): a host over mutual TLS refuses clients without a
//! certificate, with one from a foreign CA, or with an expired one; a client certificate that
//! names a plugin admits that plugin (and no other) without a join token; plugins launched by
//! a TLS host reach it over TLS. Real certificates (rcgen), real TLS (rustls), loopback only.

use std::time::Duration;

use connect_plugin::rpc::tls::{ClientAuth, ClientTls, ServerTls};
use connect_plugin::{Client, ClientConfig, Code, ServeConfig, ServiceRegistry};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};

/// A certificate authority made for the test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` signed by this CA, valid now unless `expired`: (cert, key).
    fn issue(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A host over mutual TLS (client certificates from `ca` required); its URL.
async fn mtls_host(server_ca: &Ca, client_ca: &Ca, registry: &ServiceRegistry) -> String {
    let (cert, key) = server_ca.issue(&["localhost"], false);
    let tls = ServerTls::mutual_from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        client_ca.pem.as_bytes(),
        ClientAuth::Required,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(connect_plugin::serve(
        ServeConfig::new()
            .registry(registry.clone())
            .tls(tls)
            .listener(listener),
    ));
    format!("https://localhost:{port}")
}

fn client(url: &str, server_ca: &Ca, identity: Option<(String, String)>, self_id: &str) -> Client {
    let tls = match identity {
        Some((cert, key)) => {
            ClientTls::mutual_from_pem(server_ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes())
                .unwrap()
        }
        None => ClientTls::with_root_certificates_pem(server_ca.pem.as_bytes()).unwrap(),
    };
    Client::new(
        ClientConfig::new(url)
            .self_id(self_id, "1.0.0")
            .channel(move |c| c.tls(tls).timeout(Duration::from_secs(10))),
    )
    .unwrap()
}

#[tokio::test]
async fn mutual_tls_refuses_no_foreign_and_expired_certificates() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let foreign_ca = Ca::new("someone else's CA");
    let registry = ServiceRegistry::new();
    let url = mtls_host(&server_ca, &client_ca, &registry).await;

    for (what, identity) in [
        ("no client certificate", None),
        (
            "a certificate from a foreign CA",
            Some(foreign_ca.issue(&["cache-plugin"], false)),
        ),
        (
            "an expired certificate",
            Some(client_ca.issue(&["cache-plugin"], true)),
        ),
    ] {
        let err = client(&url, &server_ca, identity, "cache-plugin")
            .connect()
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unavailable, "{what}: {err}");
    }

    // A valid certificate gets a TLS connection; without a credential the plugin still gets
    // no identity (the certificate was not allowed to join as anything).
    let good = client(
        &url,
        &server_ca,
        Some(client_ca.issue(&["cache-plugin"], false)),
        "cache-plugin",
    );
    let handshake = good.connect().await.expect("a valid certificate connects");
    assert!(handshake.identity.is_none());
}

#[tokio::test]
async fn a_client_certificate_admits_the_plugin_it_names_and_no_other() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow_certificate("cache-plugin", ["cache"])
        .unwrap();
    let url = mtls_host(&server_ca, &client_ca, &registry).await;
    let cache_cert = client_ca.issue(&["cache-plugin"], false);

    let cache = client(&url, &server_ca, Some(cache_cert.clone()), "cache-plugin");
    let identity = cache
        .connect()
        .await
        .unwrap()
        .identity
        .clone()
        .expect("the certificate admits cache-plugin");
    assert!(identity.runtime_id.starts_with("cache-plugin-"));

    // The same certificate does not make its holder another plugin, and another plugin's
    // certificate does not make it cache-plugin.
    let posing = client(&url, &server_ca, Some(cache_cert), "logger-plugin");
    assert!(posing.connect().await.unwrap().identity.is_none());
    let other = client(
        &url,
        &server_ca,
        Some(client_ca.issue(&["logger-plugin"], false)),
        "cache-plugin",
    );
    assert!(other.connect().await.unwrap().identity.is_none());
}

#[tokio::test]
async fn a_wildcard_certificate_names_no_plugin() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let registry = ServiceRegistry::new();
    registry
        .join_policy()
        .allow_certificate("cache.plugins.test", ["cache"])
        .unwrap();
    let url = mtls_host(&server_ca, &client_ca, &registry).await;
    let wildcard = client(
        &url,
        &server_ca,
        Some(client_ca.issue(&["*.plugins.test"], false)),
        "cache.plugins.test",
    );
    assert!(wildcard.connect().await.unwrap().identity.is_none());
    let exact = client(
        &url,
        &server_ca,
        Some(client_ca.issue(&["cache.plugins.test"], false)),
        "cache.plugins.test",
    );
    assert!(exact.connect().await.unwrap().identity.is_some());
}

#[tokio::test]
async fn plugins_launched_by_a_tls_host_join_and_call_each_other_over_tls() {
    use connect_plugin::Host;
    use platform::cache::{CacheServicePlugin, GetRequest, SetRequest};

    const APP_TOKEN: &str = "app-join-token-0123456789abcdef";
    let ca = Ca::new("host CA");
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"], false);
    let host = Host::builder()
        .tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap())
        .plugin_trust_pem(ca.pem.clone())
        .timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    assert!(host.url().starts_with("https://"), "{}", host.url());
    let spec = connect_plugin_tests::plugin_spec;
    // Both join the host over TLS (trusting the CA it handed them); the cache logs through the
    // host to the logger.
    host.platform()
        .add_plugin(spec(
            "logger-plugin",
            env!("CARGO_BIN_EXE_e2e-logger-plugin"),
            "logger",
            None,
        ))
        .await
        .expect("the logger joins over TLS");
    host.platform()
        .add_plugin(spec(
            "cache-plugin",
            env!("CARGO_BIN_EXE_e2e-cache-plugin"),
            "cache",
            Some("logger"),
        ))
        .await
        .expect("the cache joins over TLS");

    host.registry()
        .join_policy()
        .allow(Some("app"), APP_TOKEN, Vec::<String>::new())
        .unwrap();
    let trust = ClientTls::with_root_certificates_pem(ca.pem.as_bytes()).unwrap();
    let app = Client::new(
        ClientConfig::new(host.url())
            .self_id("app", "1.0.0")
            .join_token(APP_TOKEN)
            .channel(move |c| c.tls(trust)),
    )
    .unwrap();
    let cache = app.provider::<CacheServicePlugin>("").await.unwrap();
    cache
        .set(SetRequest {
            key: "k".into(),
            value: "over TLS".into(),
        })
        .await
        .expect("set: app -> host -> cache -> host -> logger");
    let got = cache
        .get(GetRequest { key: "k".into() })
        .await
        .unwrap()
        .into_message();
    assert_eq!(got.value, "over TLS");
    host.shutdown().await;
}

/// The packaged host from its config file: TLS with a client CA, launched plugins joining it
/// over TLS, and an outside plugin admitted by its client certificate alone
/// (`join_certificates`).
#[tokio::test]
async fn the_packaged_host_serves_mutual_tls_from_its_config() {
    use tokio::io::AsyncBufReadExt;

    let server_ca = Ca::new("host CA");
    let client_ca = Ca::new("client CA");
    let (cert, key) = server_ca.issue(&["127.0.0.1", "localhost"], false);
    let dir = std::env::temp_dir().join(format!("connect-plugin-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(dir.join("ca.pem"), &server_ca.pem).unwrap();
    std::fs::write(dir.join("clients.pem"), &client_ca.pem).unwrap();
    let config = serde_json::json!({
        "tls": { "cert": "cert.pem", "key": "key.pem", "client_ca": "clients.pem",
                 "plugin_ca": "ca.pem" },
        "join_certificates": [{ "plugin": "app" }],
        "plugins": [
            { "name": "logger-plugin", "path": env!("CARGO_BIN_EXE_e2e-logger-plugin"),
              "provides": [{ "type": "logger", "version": "0.1.0" }] },
            { "name": "cache-plugin", "path": env!("CARGO_BIN_EXE_e2e-cache-plugin"),
              "provides": [{ "type": "cache", "version": "0.1.0" }], "requires": ["logger"] }
        ]
    });
    let path = dir.join("host.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-connect-plugin-host"))
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(host.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("ready ") {
                return url.to_owned();
            }
        }
        panic!("the host exited before it was ready");
    })
    .await
    .expect("the host starts its plugins over TLS");
    assert!(url.starts_with("https://"), "{url}");

    let app = client(
        &url,
        &server_ca,
        Some(client_ca.issue(&["app"], false)),
        "app",
    );
    assert!(
        app.connect().await.unwrap().identity.is_some(),
        "the certificate admits app"
    );
    let cache = app
        .provider::<platform::cache::CacheServicePlugin>("")
        .await
        .unwrap();
    cache
        .set(platform::cache::SetRequest {
            key: "k".into(),
            value: "v".into(),
        })
        .await
        .expect("app -> host -> cache -> host -> logger, over TLS to the host");
    // Without a certificate (client auth is optional) a client connects but is not admitted;
    // a foreign or expired one is refused even so.
    let stranger = client(&url, &server_ca, None, "app");
    assert!(stranger.connect().await.unwrap().identity.is_none());
    let foreign_ca = Ca::new("someone else's CA");
    for (what, identity) in [
        ("foreign", foreign_ca.issue(&["app"], false)),
        ("expired", client_ca.issue(&["app"], true)),
    ] {
        let err = client(&url, &server_ca, Some(identity), "app")
            .connect()
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unavailable, "{what}: {err}");
    }
    let _ = host.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

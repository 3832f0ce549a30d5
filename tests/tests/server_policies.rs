//! Reliability issue: server interceptors for users' own services, authentication (bearer
//! tokens, API keys; the principal reaches the handler) and rate limiting per verified caller,
//! against real clients over real sockets.

use connect_plugin::rpc::policy::{ApiKey, Auth, BearerToken, RateLimit};
use connect_plugin::rpc::{Channel, ChannelBuilder, Server};
use connect_plugin::{Code, Error, Request, Response};
use connect_plugin_tests::interop::{
    InteropService, InteropServiceClient, InteropServicePlugin, InteropServiceServer, Payload,
};

/// Answers with the principal the interceptors established ("" without one).
struct WhoAmI;

impl InteropService for WhoAmI {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        Ok(Response::new(Payload {
            text: request.principal().unwrap_or_default().to_owned(),
            ..Default::default()
        }))
    }
    async fn lookup(&self, request: Request<Payload>) -> Result<Response<Payload>, Error> {
        self.unary(request).await
    }
}

async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        server
            .add_service(InteropServiceServer::new(WhoAmI).into_service())
            .serve(listener),
    );
    url
}

fn client(
    url: &str,
    configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder,
) -> InteropServiceClient {
    connect_plugin::dispense::<InteropServicePlugin>(
        &configure(Channel::builder(url)).build().unwrap(),
    )
}

fn auth() -> Auth {
    Auth::new()
        .bearer(|token| match token {
            "alice-token" => Some("alice".to_owned()),
            "bob-token" => Some("bob".to_owned()),
            _ => None,
        })
        .api_key("x-api-key", |key| {
            (key == "key-1").then(|| "batch".to_owned())
        })
        .open("/interop.v1.InteropService/Lookup")
}

#[tokio::test]
async fn auth_names_the_principal_and_refuses_missing_or_bad_credentials() {
    let url = serve(Server::new().intercept(auth())).await;
    let who = |c: &InteropServiceClient| {
        let c = c.clone();
        async move {
            c.unary(Payload::default())
                .await
                .map(|r| r.into_message().text)
        }
    };

    let alice = client(&url, |c| {
        c.interceptor(BearerToken::new("alice-token").unwrap())
    });
    assert_eq!(who(&alice).await.unwrap(), "alice");
    let batch = client(&url, |c| {
        c.interceptor(ApiKey::new("x-api-key", "key-1").unwrap())
    });
    assert_eq!(who(&batch).await.unwrap(), "batch");

    let anonymous = client(&url, |c| c);
    let err = who(&anonymous).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        err.message()
            .contains("Authorization: Bearer <token>, or x-api-key: <key>"),
        "{err}"
    );
    let guessing = client(&url, |c| c.interceptor(BearerToken::new("guess").unwrap()));
    let err = who(&guessing).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("not valid"), "{err}");

    // A stream is refused in its end-stream message, as its handler would have refused it.
    let streamed = async {
        let mut stream = anonymous
            .server_stream(Payload::default())
            .await?
            .into_message();
        stream.message().await
    };
    let err = streamed.await.expect_err("a refused stream");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // On the wire: HTTP 200 and the error in the end-stream message (Connect's streaming rule).
    let raw = connect_plugin_tests::raw_http1(
        url.trim_start_matches("http://").parse().unwrap(),
        "POST",
        "/interop.v1.InteropService/ServerStream",
        &[
            ("content-type", "application/connect+json"),
            ("connect-protocol-version", "1"),
        ],
        b"\x00\x00\x00\x00\x02{}",
    )
    .await;
    assert_eq!(raw.status, 200, "{}", raw.text());
    assert!(raw.text().contains("unauthenticated"), "{}", raw.text());

    // An open procedure needs nothing, and names no one.
    let open = anonymous.lookup(Payload::default()).await.unwrap();
    assert_eq!(open.text, "");
}

#[tokio::test]
async fn the_rate_limit_is_per_verified_caller() {
    let url = serve(
        Server::new()
            .intercept(auth())
            .intercept(RateLimit::per_second(0.01, 3)),
    )
    .await;
    let alice = client(&url, |c| {
        c.interceptor(BearerToken::new("alice-token").unwrap())
    });
    for _ in 0..3 {
        alice.unary(Payload::default()).await.unwrap();
    }
    let err = alice.unary(Payload::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("principal alice"), "{err}");
    let hint: u64 = err
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry hint");
    assert!(hint >= 1, "{hint}");

    // Bob has his own bucket.
    let bob = client(&url, |c| {
        c.interceptor(BearerToken::new("bob-token").unwrap())
    });
    bob.unary(Payload::default())
        .await
        .expect("bob is not limited by alice");
}

#[tokio::test]
async fn credentials_are_read_strictly() {
    let url = serve(
        Server::new().intercept(
            Auth::new()
                .bearer(|token| (token == "alice-token").then(|| "alice".to_owned()))
                .api_key("X-Api-Key", |key| {
                    (key == "key-1").then(|| "batch".to_owned())
                })
                .optional(),
        ),
    )
    .await;
    let plain = client(&url, |c| c);
    let with = |headers: &[(&'static str, &'static str)]| {
        let mut request = Request::new(Payload::default());
        for (name, value) in headers {
            request
                .metadata_mut()
                .append(*name, http::HeaderValue::from_static(value));
        }
        let plain = plain.clone();
        async move { plain.unary(request).await.map(|r| r.into_message().text) }
    };
    // The scheme in any case; the API key header named in any case.
    assert_eq!(
        with(&[("authorization", "bearer alice-token")])
            .await
            .unwrap(),
        "alice"
    );
    assert_eq!(with(&[("x-api-key", "key-1")]).await.unwrap(), "batch");
    // Optional lets the anonymous through, but not a bad or doubled credential.
    assert_eq!(with(&[]).await.unwrap(), "");
    for bad in [
        &[("authorization", "Bearer guess")][..],
        &[("authorization", "Basic YWxpY2U6cHc=")],
        &[
            ("authorization", "Bearer alice-token"),
            ("authorization", "Bearer other"),
        ],
        &[("x-api-key", "key-1"), ("x-api-key", "key-2")],
    ] {
        let err = with(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
    }
}

//! `app-plugin`: requires `cache`; finds one with the host's registry and uses it through the
//! host, prints what happened on stdout, and exits. Needs `HOST_URL`.

use std::process::ExitCode;

use connect_plugin::{Client, ClientConfig, Error};
use platform::cache::{CacheServicePlugin, GetRequest, SetRequest};

#[tokio::main]
async fn main() -> ExitCode {
    platform::init_tracing();
    let run = async {
        let host = Client::new(
            ClientConfig::new(platform::host_url()?)
                .self_id("app-plugin", env!("CARGO_PKG_VERSION")),
        )?;
        let cache = host.provider::<CacheServicePlugin>("").await?;
        cache
            .set(SetRequest {
                key: "greeting".into(),
                value: "hello from app-plugin".into(),
            })
            .await?;
        let got = cache
            .get(GetRequest {
                key: "greeting".into(),
            })
            .await?;
        println!(
            "app-plugin: cache returned found={} value={:?}",
            got.found, got.value
        );
        Ok::<_, Error>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("app-plugin: {error}");
            ExitCode::FAILURE
        }
    }
}

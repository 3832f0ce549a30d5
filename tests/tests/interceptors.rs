//! Client interceptors see every call: they add metadata before it is sent, can refuse it,
//! and observe the outcome, for unary and streaming calls alike.

use std::sync::{Arc, Mutex};

use connect_plugin::{Channel, Code, Error, rpc::Interceptor, rpc::MethodDescriptor};
use connect_plugin_tests::interop::{InteropServicePlugin, Payload, serve_interop};
use http::HeaderMap;

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Interceptor for Recorder {
    fn before(&self, method: &MethodDescriptor, headers: &mut HeaderMap) -> Result<(), Error> {
        headers.insert("x-echo", http::HeaderValue::from_static("from-interceptor"));
        self.0
            .lock()
            .unwrap()
            .push(format!("before {}", method.method));
        Ok(())
    }

    fn after(&self, method: &MethodDescriptor, outcome: Result<&HeaderMap, &Error>) {
        let what = match outcome {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().to_string(),
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("after {} {what}", method.method));
    }
}

struct Refuse;
impl Interceptor for Refuse {
    fn before(&self, _: &MethodDescriptor, _: &mut HeaderMap) -> Result<(), Error> {
        Err(Error::new(Code::PermissionDenied, "refused by policy"))
    }
}

#[tokio::test]
async fn interceptors_add_metadata_observe_outcomes_and_can_refuse() {
    let url = serve_interop().await;
    let recorder = Recorder::default();
    let channel = Channel::builder(&url)
        .interceptor(recorder.clone())
        .build()
        .unwrap();
    let client = connect_plugin::dispense::<InteropServicePlugin>(&channel);
    let echoed = client.unary(Payload::default()).await.unwrap();
    assert_eq!(echoed.echoed_header, "from-interceptor");
    let _ = client
        .unary(Payload {
            fail_code: "aborted".into(),
            ..Default::default()
        })
        .await;
    let stream = client
        .server_stream(Payload {
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(stream);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "before Unary",
            "after Unary ok",
            "before Unary",
            "after Unary aborted",
            "before ServerStream",
            "after ServerStream ok"
        ]
    );

    let refusing = Channel::builder(&url).interceptor(Refuse).build().unwrap();
    let err = connect_plugin::dispense::<InteropServicePlugin>(&refusing)
        .unary(Payload::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "refused by policy")
    );
}

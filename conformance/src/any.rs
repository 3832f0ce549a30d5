//! `google.protobuf.Any` for the conformance messages, with the canonical proto3 JSON form
//! (`{"@type": "type.googleapis.com/<name>", ...fields of the message}`) that the suite's
//! reference peers read and write. Canonical `Any` JSON needs to know the packed message's
//! type: this one knows the types the suite packs (the conformance requests and the request
//! info); another type falls back to `{"@type", "value"}` with the bytes in base64.
//! (connect-plugin's generated code uses `pbjson_types::Any`, which writes
//! `{"typeUrl", "value"}`: see the conformance README.)

use bytes::Bytes;
use serde::de::Error as _;
use serde::ser::Error as _;

use crate::proto::{
    BidiStreamRequest, ClientStreamRequest, IdempotentUnaryRequest, ServerStreamRequest,
    UnaryRequest, conformance_payload::RequestInfo,
};

/// A packed message and the URL of its type.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Any {
    /// `type.googleapis.com/<full message name>`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The message, in the protobuf binary encoding.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl prost::Name for Any {
    const NAME: &'static str = "Any";
    const PACKAGE: &'static str = "google.protobuf";
}

/// Decodes `value` as `M` and writes its JSON object.
fn to_json<M: prost::Message + Default + serde::Serialize>(
    value: &Bytes,
) -> Result<serde_json::Value, String> {
    let message = M::decode(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&message).map_err(|e| e.to_string())
}

/// Reads `M`'s JSON object and encodes it.
fn from_json<M: prost::Message + Default + serde::de::DeserializeOwned>(
    object: serde_json::Value,
) -> Result<Bytes, String> {
    let message: M = serde_json::from_value(object).map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec().into())
}

/// The message JSON of a packed value of a known type; `None` for another type.
fn known_to_json(name: &str, value: &Bytes) -> Option<Result<serde_json::Value, String>> {
    Some(match name {
        "connectrpc.conformance.v1.UnaryRequest" => to_json::<UnaryRequest>(value),
        "connectrpc.conformance.v1.IdempotentUnaryRequest" => {
            to_json::<IdempotentUnaryRequest>(value)
        }
        "connectrpc.conformance.v1.ServerStreamRequest" => to_json::<ServerStreamRequest>(value),
        "connectrpc.conformance.v1.ClientStreamRequest" => to_json::<ClientStreamRequest>(value),
        "connectrpc.conformance.v1.BidiStreamRequest" => to_json::<BidiStreamRequest>(value),
        "connectrpc.conformance.v1.ConformancePayload.RequestInfo" => to_json::<RequestInfo>(value),
        _ => return None,
    })
}

fn known_from_json(name: &str, object: serde_json::Value) -> Option<Result<Bytes, String>> {
    Some(match name {
        "connectrpc.conformance.v1.UnaryRequest" => from_json::<UnaryRequest>(object),
        "connectrpc.conformance.v1.IdempotentUnaryRequest" => {
            from_json::<IdempotentUnaryRequest>(object)
        }
        "connectrpc.conformance.v1.ServerStreamRequest" => from_json::<ServerStreamRequest>(object),
        "connectrpc.conformance.v1.ClientStreamRequest" => from_json::<ClientStreamRequest>(object),
        "connectrpc.conformance.v1.BidiStreamRequest" => from_json::<BidiStreamRequest>(object),
        "connectrpc.conformance.v1.ConformancePayload.RequestInfo" => {
            from_json::<RequestInfo>(object)
        }
        _ => return None,
    })
}

fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or_default()
}

impl serde::Serialize for Any {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        let mut object = match known_to_json(type_name(&self.type_url), &self.value) {
            Some(Ok(serde_json::Value::Object(object))) => object,
            Some(Ok(_)) => return Err(S::Error::custom("a packed message is not a JSON object")),
            Some(Err(e)) => return Err(S::Error::custom(e)),
            None => {
                let mut object = serde_json::Map::new();
                object.insert(
                    "value".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&self.value)
                        .into(),
                );
                object
            }
        };
        object.insert("@type".into(), self.type_url.clone().into());
        serde::Serialize::serialize(&object, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Any {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let mut object = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let type_url = match object.remove("@type") {
            Some(serde_json::Value::String(url)) => url,
            _ => return Err(D::Error::custom("an Any needs its \"@type\"")),
        };
        let value = match known_from_json(
            type_name(&type_url),
            serde_json::Value::Object(object.clone()),
        ) {
            Some(encoded) => encoded.map_err(D::Error::custom)?,
            None => match object.get("value") {
                Some(serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(D::Error::custom)?
                    .into(),
                _ => Bytes::new(),
            },
        };
        Ok(Self { type_url, value })
    }
}

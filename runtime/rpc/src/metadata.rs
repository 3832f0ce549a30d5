//! Binary metadata (rule P3): keys ending in `-bin` carry base64 values, sent unpadded and
//! accepted padded or not. Other metadata values are printable ASCII; use `HeaderMap`
//! directly for those.
//!
//! ```
//! use connect_plugin_rpc::metadata;
//! use http::HeaderMap;
//!
//! let mut headers = HeaderMap::new();
//! metadata::insert_binary(&mut headers, "x-trace-bin", &[0, 159, 255]).unwrap();
//! assert_eq!(headers["x-trace-bin"], "AJ//");
//! assert_eq!(metadata::get_binary(&headers, "x-trace-bin").unwrap().unwrap(), [0, 159, 255]);
//! ```
//!
//! It only converts values in a `HeaderMap` the caller holds; sending metadata with a call is
//! [`crate::server`]'s and [`crate::channel`]'s.

use base64::Engine as _;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::Error;
use crate::protocol::error_json::BASE64_ANY_PAD;

/// Appends a binary value under `key`, which must end in `-bin`.
///
/// # Errors
/// `invalid_argument` if the key does not end in `-bin`, is not a valid header name, or uses
/// the reserved `connect-` prefix.
pub fn insert_binary(map: &mut HeaderMap, key: &str, value: &[u8]) -> Result<(), Error> {
    let name = binary_key(key)?;
    let encoded = BASE64_ANY_PAD.encode(value);
    let value = HeaderValue::from_str(&encoded)
        .map_err(|e| Error::internal(format!("base64 is always a valid header value: {e}")))?;
    map.append(name, value);
    Ok(())
}

/// The first binary value under `key`, decoded; `None` if absent.
///
/// # Errors
/// `invalid_argument` if the key is not a `-bin` key or the value is not base64.
pub fn get_binary(map: &HeaderMap, key: &str) -> Option<Result<Vec<u8>, Error>> {
    let name = match binary_key(key) {
        Ok(name) => name,
        Err(e) => return Some(Err(e)),
    };
    map.get(&name).map(|value| decode(key, value))
}

/// Every binary value under `key`, decoded.
pub fn get_all_binary<'a>(
    map: &'a HeaderMap,
    key: &'a str,
) -> impl Iterator<Item = Result<Vec<u8>, Error>> + 'a {
    map.get_all(key).iter().map(move |value| decode(key, value))
}

fn decode(key: &str, value: &HeaderValue) -> Result<Vec<u8>, Error> {
    BASE64_ANY_PAD
        .decode(value.as_bytes())
        .map_err(|e| Error::invalid_argument(format!("metadata {key:?} is not valid base64: {e}")))
}

fn binary_key(key: &str) -> Result<HeaderName, Error> {
    if !key.ends_with("-bin") {
        return Err(Error::invalid_argument(format!(
            "binary metadata key {key:?} must end in \"-bin\""
        )));
    }
    if key.starts_with("connect-") {
        return Err(Error::invalid_argument(format!(
            "metadata key {key:?} uses the reserved \"connect-\" prefix"
        )));
    }
    HeaderName::from_bytes(key.as_bytes())
        .map_err(|_| Error::invalid_argument(format!("{key:?} is not a valid metadata key")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p3_binary_values_are_unpadded_base64_and_padded_is_accepted() {
        let mut h = HeaderMap::new();
        insert_binary(&mut h, "x-a-bin", b"\x01").unwrap();
        assert_eq!(h["x-a-bin"], "AQ");
        h.insert("x-b-bin", HeaderValue::from_static("AQ=="));
        assert_eq!(get_binary(&h, "x-b-bin").unwrap().unwrap(), b"\x01");
        insert_binary(&mut h, "x-a-bin", b"\x02").unwrap();
        let all: Vec<_> = get_all_binary(&h, "x-a-bin").map(Result::unwrap).collect();
        assert_eq!(all, [b"\x01".to_vec(), b"\x02".to_vec()]);
    }

    #[test]
    fn p3_keys_must_end_in_bin_and_avoid_the_reserved_prefix() {
        let mut h = HeaderMap::new();
        assert!(insert_binary(&mut h, "x-a", b"1").is_err());
        assert!(insert_binary(&mut h, "connect-x-bin", b"1").is_err());
        h.insert("x-c-bin", HeaderValue::from_static("!!"));
        assert!(get_binary(&h, "x-c-bin").unwrap().is_err());
        assert!(get_binary(&h, "x-missing-bin").is_none());
    }
}

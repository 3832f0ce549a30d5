//! `Connect-Timeout-Ms` (rule P5): a positive integer of at most 10 digits, in milliseconds.
//!
//! The header value to a `Duration` and back, nothing more: enforcing the deadline is
//! [`crate::server`]'s, bounding a call's wait is [`crate::channel`]'s, and passing the deadline on
//! to the calls a handler makes is [`crate::deadline`]'s.

use std::time::Duration;

use http::HeaderValue;

use crate::{Code, Error};

/// Parses the header value; anything but 1 to 10 ASCII digits is `invalid_argument`.
pub(crate) fn parse(value: &HeaderValue) -> Result<Duration, Error> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "invalid Connect-Timeout-Ms header {value:?}: expected a positive integer of at most 10 digits"
            ),
        ));
    }
    let millis = bytes
        .iter()
        .fold(0u64, |acc, digit| acc * 10 + u64::from(digit - b'0'));
    Ok(Duration::from_millis(millis))
}

/// Formats a timeout for the header, rounding sub-millisecond remainders up so a short
/// deadline never becomes an infinite one, and clamping to the 10-digit maximum.
pub(crate) fn format(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 9_999_999_999;
    let mut millis = timeout.as_millis();
    if !timeout.as_nanos().is_multiple_of(1_000_000) || millis == 0 {
        millis += 1;
    }
    HeaderValue::from(millis.min(MAX) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p5_timeout_accepts_up_to_ten_digits() {
        let ok = parse(&HeaderValue::from_static("9999999999")).unwrap();
        assert_eq!(ok, Duration::from_millis(9_999_999_999));
        assert_eq!(
            parse(&HeaderValue::from_static("0")).unwrap(),
            Duration::ZERO
        );
    }

    #[test]
    fn p5_timeout_rejects_eleven_digits_signs_and_garbage() {
        for bad in ["12345678901", "-1", "+5", "1.5", "", "10s", " 1"] {
            let err = parse(&HeaderValue::from_str(bad).unwrap()).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn p5_timeout_formatting_rounds_up_and_clamps() {
        assert_eq!(format(Duration::from_micros(1500)), "2");
        assert_eq!(format(Duration::from_millis(250)), "250");
        assert_eq!(format(Duration::ZERO), "1");
        assert_eq!(format(Duration::from_secs(u64::MAX / 2)), "9999999999");
    }
}

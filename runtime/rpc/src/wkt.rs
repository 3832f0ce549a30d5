//! Well-known types whose JSON mapping the runtime provides itself.
//!
//! Generated code takes the well-known types from `pbjson-types`, except
//! `google.protobuf.Timestamp`, which maps to [`Timestamp`] here: pbjson-types writes
//! timestamps with a `+00:00` offset, which the proto3 JSON mapping does not allow (it requires
//! `Z`, and 0, 3, 6 or 9 fractional digits) and which protobuf-es, for one, rejects.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `google.protobuf.Timestamp`: a point in time, seconds and nanoseconds since the Unix epoch,
/// with the canonical proto3 JSON form (`"1972-01-01T10:00:20.021Z"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Message)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z; must be in 0001-01-01 ..= 9999-12-31.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Non-negative fraction of a second, 0 ..= 999,999,999.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl ::prost::Name for Timestamp {
    const NAME: &'static str = "Timestamp";
    const PACKAGE: &'static str = "google.protobuf";
    fn full_name() -> String {
        "google.protobuf.Timestamp".into()
    }
    fn type_url() -> String {
        "type.googleapis.com/google.protobuf.Timestamp".into()
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range the JSON mapping allows.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        SystemTime::now().into()
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp {
                seconds: after.as_secs() as i64,
                nanos: after.subsec_nanos() as i32,
            },
            Err(before) => {
                let d = before.duration();
                let (mut seconds, mut nanos) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i32));
                if nanos < 0 {
                    seconds -= 1;
                    nanos += 1_000_000_000;
                }
                Timestamp { seconds, nanos }
            }
        }
    }
}

impl TryFrom<Timestamp> for SystemTime {
    type Error = &'static str;
    fn try_from(t: Timestamp) -> Result<Self, Self::Error> {
        if !(0..1_000_000_000).contains(&t.nanos) {
            return Err("Timestamp.nanos must be in 0..=999999999");
        }
        let whole = Duration::from_secs(t.seconds.unsigned_abs());
        let base = if t.seconds >= 0 {
            UNIX_EPOCH.checked_add(whole)
        } else {
            UNIX_EPOCH.checked_sub(whole)
        };
        base.and_then(|b| b.checked_add(Duration::from_nanos(t.nanos as u64)))
            .ok_or("Timestamp out of range for SystemTime")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

impl Timestamp {
    fn to_rfc3339(self) -> Result<String, String> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&self.seconds)
            || !(0..1_000_000_000).contains(&self.nanos)
        {
            return Err(format!(
                "Timestamp {{ seconds: {}, nanos: {} }} is outside 0001-01-01..9999-12-31 or has invalid nanos",
                self.seconds, self.nanos
            ));
        }
        let days = self.seconds.div_euclid(86_400);
        let secs = self.seconds.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        let mut out = format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        let n = self.nanos;
        let _ = match n {
            0 => Ok(()),
            n if n % 1_000_000 == 0 => write!(out, ".{:03}", n / 1_000_000),
            n if n % 1_000 == 0 => write!(out, ".{:06}", n / 1_000),
            n => write!(out, ".{n:09}"),
        };
        out.push('Z');
        Ok(out)
    }

    fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let part = b.get(r)?;
            part.iter().all(u8::is_ascii_digit).then(|| {
                part.iter()
                    .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
            })
        };
        if b.len() < 20
            || b[4] != b'-'
            || b[7] != b'-'
            || !matches!(b[10], b'T' | b't')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        let mut i = 19;
        let mut nanos = 0i64;
        if b[i] == b'.' {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            let digits = end - start;
            if digits == 0 || digits > 9 {
                return None;
            }
            nanos = num(start..end)? * 10i64.pow((9 - digits) as u32);
            i = end;
        }
        let offset = match b.get(i..)? {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
                if h > 23 || m > 59 {
                    return None;
                }
                let minutes = h * 60 + m;
                if *sign == b'+' { minutes } else { -minutes }
            }
            _ => return None,
        };
        let (_, real_month, real_day) = civil_from_days(days_from_civil(year, month, day));
        if (real_month, real_day) != (month, day) {
            return None; // e.g. February 30
        }
        let seconds =
            days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
                - offset * 60;
        (MIN_SECONDS..=MAX_SECONDS)
            .contains(&seconds)
            .then_some(Timestamp {
                seconds,
                nanos: nanos as i32,
            })
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.to_rfc3339().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid Timestamp {text:?}: expected RFC 3339 such as \"1972-01-01T10:00:20.021Z\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(t: Timestamp) -> String {
        serde_json::to_string(&t).unwrap()
    }

    #[test]
    fn timestamps_use_z_and_3_6_or_9_fraction_digits() {
        assert_eq!(
            json(Timestamp {
                seconds: 0,
                nanos: 0
            }),
            r#""1970-01-01T00:00:00Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }),
            r#""1970-01-01T00:00:01.500Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: 1,
                nanos: 1_000
            }),
            r#""1970-01-01T00:00:01.000001Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: 1,
                nanos: 1
            }),
            r#""1970-01-01T00:00:01.000000001Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: MIN_SECONDS,
                nanos: 0
            }),
            r#""0001-01-01T00:00:00Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: MAX_SECONDS,
                nanos: 999_999_999
            }),
            r#""9999-12-31T23:59:59.999999999Z""#
        );
        assert_eq!(
            json(Timestamp {
                seconds: 68_688_000,
                nanos: 0
            }),
            r#""1972-03-06T00:00:00Z""#
        );
        assert!(
            serde_json::to_string(&Timestamp {
                seconds: MAX_SECONDS + 1,
                nanos: 0
            })
            .is_err()
        );
        assert!(
            serde_json::to_string(&Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
    }

    #[test]
    fn timestamps_parse_offsets_and_fractions() {
        let parse = |s: &str| serde_json::from_str::<Timestamp>(&format!("{s:?}"));
        assert_eq!(
            parse("1970-01-01T00:00:01.5Z").unwrap(),
            Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            parse("1970-01-01T01:00:00+01:00").unwrap(),
            Timestamp {
                seconds: 0,
                nanos: 0
            }
        );
        assert_eq!(parse("1969-12-31T23:59:59-00:00").unwrap().seconds, -1);
        for bad in [
            "1970-01-01",
            "1970-02-30T00:00:00Z",
            "1970-01-01T00:00:00",
            "1970-01-01T24:00:00Z",
            "1970-01-01T00:00:00.Z",
            "1970-01-01T00:00:00.1234567891Z",
            "x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_through_json_across_the_range() {
        for seconds in [MIN_SECONDS, -1, 0, 951_782_400, 4_107_542_400, MAX_SECONDS] {
            let t = Timestamp {
                seconds,
                nanos: 123_000_000,
            };
            let back: Timestamp = serde_json::from_str(&json(t)).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn system_time_conversions() {
        let t = Timestamp {
            seconds: -2,
            nanos: 250_000_000,
        };
        let st: SystemTime = t.try_into().unwrap();
        assert_eq!(Timestamp::from(st), t);
    }
}

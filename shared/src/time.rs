//! The one time format of every answer and event: RFC 3339, UTC, `Z`, millisecond precision
//! (`2026-12-02T05:40:20.400Z`). Fields use `#[serde(serialize_with = "…::ms")]` (or `ms_opt`);
//! the webhook triggers format theirs the same way in SQL.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// The text of `at` in the one format.
pub fn format(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serialises a time in the one format.
pub fn ms<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(at))
}

/// Serialises an optional time in the one format (`null` when absent).
pub fn ms_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&format(at)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_have_milliseconds_and_z() {
        let at: chrono::DateTime<chrono::Utc> =
            "2026-12-02T05:40:20.400123+00:00".parse().expect("time");
        assert_eq!(super::format(&at), "2026-12-02T05:40:20.400Z");
        let whole: chrono::DateTime<chrono::Utc> = "2026-12-02T05:40:20Z".parse().expect("time");
        assert_eq!(super::format(&whole), "2026-12-02T05:40:20.000Z");
    }
}

//! One audit record: its line encoding (stable field order) and how a line is read back and hashed.

use aws_lc_rs::digest;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value};

/// `prev` of the very first record of a log.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `seq` of the very first record of a log.
pub(crate) const FIRST_SEQ: u64 = 1;

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub time: Timestamp,
    pub kind: String,
    pub instance: String,
    pub data: Map<String, Value>,
    /// Hex SHA-256 of the previous record's line (without its newline).
    pub prev: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    seq: u64,
    time: String,
    kind: String,
    instance: String,
    data: Map<String, Value>,
    prev: String,
}

/// RFC 3339 UTC with microseconds: fixed width, so lines sort and read evenly.
pub(crate) fn format_time(t: Timestamp) -> String {
    format!("{t:.6}")
}

/// Serializes a record's `data` once, where it is produced. Records carry a JSON object; anything else
/// is wrapped as `{"value": ...}` rather than refused, because an audit record should never be lost over
/// its shape.
pub(crate) fn encode_data(data: &Value) -> Vec<u8> {
    let wrapped;
    let obj = match data {
        Value::Object(_) => data,
        Value::Null => &Value::Object(Map::new()),
        other => {
            wrapped = serde_json::json!({ "value": other });
            &wrapped
        }
    };
    // Serializing a `Value` into a Vec cannot fail: no I/O, and map keys are strings.
    serde_json::to_vec(obj).unwrap_or_else(|_| b"{}".to_vec())
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends one record line (with its trailing newline) to `out`; returns the line's hash.
/// The field order written here is the order on disk; the hash covers the exact bytes, so it must never
/// change. `data` is a serialized JSON object from [`encode_data`].
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    kind: &str,
    instance: &str,
    data: &[u8],
    prev: &str,
) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":");
    push_json_str(out, time);
    out.extend_from_slice(b",\"kind\":");
    push_json_str(out, kind);
    out.extend_from_slice(b",\"instance\":");
    push_json_str(out, instance);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"prev\":");
    push_json_str(out, prev);
    out.push(b'}');
    let hash = sha256(&out[start..]);
    out.push(b'\n');
    hash
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses one line (without newline) into a record, checking the shape a writer produces.
pub(crate) fn parse_line(line: &[u8]) -> Result<Record, ParseError> {
    let raw: LineIn = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            ParseError::Shape(e.to_string())
        } else {
            ParseError::Json(e.to_string())
        }
    })?;
    let time: Timestamp = raw
        .time
        .parse()
        .map_err(|e| ParseError::Shape(format!("time {:?} is not RFC 3339: {e}", raw.time)))?;
    if raw.prev.len() != 64
        || !raw
            .prev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ParseError::Shape(format!(
            "prev {:?} is not 64 lowercase hex digits",
            raw.prev
        )));
    }
    Ok(Record {
        seq: raw.seq,
        time,
        kind: raw.kind,
        instance: raw.instance,
        data: raw.data,
        prev: raw.prev,
    })
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParseError {
    /// Not JSON at all (or cut short).
    Json(String),
    /// JSON, but not a record (missing/extra fields, wrong types, bad time or prev).
    Shape(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Json(e) => write!(f, "invalid JSON ({e})"),
            ParseError::Shape(e) => write!(f, "not a record ({e})"),
        }
    }
}

impl Record {
    /// For an `audit.recovered` record about a torn fragment: (offset, length, sha256 hex).
    pub(crate) fn torn_reference(&self) -> Option<(u64, u64, &str)> {
        if self.kind != super::Kind::Recovered.as_str() {
            return None;
        }
        let offset = self.data.get("torn_offset")?.as_u64()?;
        let length = self.data.get("torn_length")?.as_u64()?;
        let sha = self.data.get("torn_sha256")?.as_str()?;
        Some((offset, length, sha))
    }

    /// For an `audit.recovered` record after records lost from the end: the lost seq range
    /// (first, last). The recovered record itself then has seq `last + 1`: seqs are never reused.
    pub(crate) fn lost_range(&self) -> Option<(u64, u64)> {
        if self.kind != super::Kind::Recovered.as_str() {
            return None;
        }
        let first = self.data.get("lost_first_seq")?.as_u64()?;
        let last = self.data.get("lost_last_seq")?.as_u64()?;
        (first <= last).then_some((first, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_documented_order_and_reads_back() {
        let mut out = Vec::new();
        let data = serde_json::json!({"b": 1, "a": "x"});
        let hash = encode_into(
            &mut out,
            5,
            "2026-11-26T09:35:00.000000Z",
            "backup.created",
            "home",
            &encode_data(&data),
            GENESIS_PREV,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(
            r#"{"seq":5,"time":"2026-11-26T09:35:00.000000Z","kind":"backup.created","instance":"home","data":{"a":"x","b":1},"prev":"000"#
        ));
        assert!(text.ends_with("\"}\n"));
        assert_eq!(hash, sha256(&out[..out.len() - 1]));
        let rec = parse_line(&out[..out.len() - 1]).unwrap();
        assert_eq!(rec.seq, 5);
        assert_eq!(rec.kind, "backup.created");
        assert_eq!(rec.data["b"], 1);
    }

    #[test]
    fn rejects_lines_that_are_not_records() {
        assert!(matches!(
            parse_line(b"{\"seq\":1"),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(
            parse_line(b"{\"seq\":1}"),
            Err(ParseError::Shape(_))
        ));
        let upper = format!(
            r#"{{"seq":1,"time":"2026-11-26T09:35:00Z","kind":"k","instance":"i","data":{{}},"prev":"{}"}}"#,
            "A".repeat(64)
        );
        assert!(matches!(
            parse_line(upper.as_bytes()),
            Err(ParseError::Shape(_))
        ));
    }

    #[test]
    fn data_that_is_not_an_object_is_wrapped() {
        assert_eq!(encode_data(&serde_json::json!(5)), br#"{"value":5}"#);
        assert_eq!(encode_data(&Value::Null), b"{}");
        let mut out = Vec::new();
        encode_into(
            &mut out,
            1,
            "2026-11-26T09:35:00Z",
            "k\"q",
            "i",
            b"{}",
            GENESIS_PREV,
        );
        assert!(parse_line(&out[..out.len() - 1]).is_ok());
    }

    #[test]
    fn time_has_fixed_microsecond_precision() {
        let t: Timestamp = "2026-11-26T09:35:00Z".parse().unwrap();
        assert_eq!(format_time(t), "2026-11-26T09:35:00.000000Z");
    }
}

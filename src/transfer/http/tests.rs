//! Unit tests of the HTTP download engine's wire handling: body framings, `Content-Range`, the
//! sidecar, status answers and the token's absence from debug output.

use super::body::Body;
use super::response::Head;
use super::*;

async fn decode(framing: Framing, wire: &[u8]) -> Result<Vec<u8>, TransferError> {
    let mut r = tokio::io::BufReader::with_capacity(7, wire);
    let mut body = Body::new(framing);
    let mut out = Vec::new();
    while let Some(c) = body.next(&mut r, "http://x/").await? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

#[tokio::test]
async fn chunked_bodies_decode_with_extensions_and_trailers() {
    let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: y\r\n\r\n";
    assert_eq!(
        decode(Framing::Chunked, wire).await.unwrap(),
        b"hello 0123456789"
    );
}

#[tokio::test]
async fn a_chunked_body_cut_mid_chunk_is_a_dropped_connection() {
    let e = decode(Framing::Chunked, b"a\r\n01234").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = decode(Framing::Chunked, b"5\r\nhello").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = decode(Framing::Chunked, b"zz\r\n").await.unwrap_err();
    assert!(matches!(e, TransferError::HttpProtocol { .. }), "{e}");
    let e = decode(Framing::Chunked, b"2\r\nabc\r\n").await.unwrap_err();
    assert!(matches!(e, TransferError::HttpProtocol { .. }), "{e}");
}

#[tokio::test]
async fn length_and_close_delimited_bodies() {
    assert_eq!(
        decode(Framing::Length(4), b"abcdefgh").await.unwrap(),
        b"abcd"
    );
    assert_eq!(decode(Framing::Length(9), b"abc").await.unwrap(), b"abc");
    assert_eq!(
        decode(Framing::Close, b"abcdefgh").await.unwrap(),
        b"abcdefgh"
    );
}

#[test]
fn content_range_and_meta_round_trip() {
    assert_eq!(
        parse_content_range(Some("bytes 100-199/1000")),
        Some((100, 1000))
    );
    assert_eq!(parse_content_range(Some("bytes */1000")), None);
    assert_eq!(parse_content_range(Some("bytes 5-4/10")), None);
    let m = Meta {
        path: "/a?b=c".into(),
        size: 42,
        validator: "\"abc\"".into(),
    };
    assert_eq!(Meta::parse(&m.text()), Some(m));
    assert_eq!(Meta::parse("hapull-partial v1\nsize 1\n"), None);
}

#[test]
fn statuses_say_what_to_do_and_which_are_worth_retrying() {
    let head = |status, headers: &[(&str, &str)]| Head {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let e = check_status(&head(401, &[]), "u", "/p").unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("administrator"),
        "{e}"
    );
    let e = check_status(&head(302, &[("Location", "https://evil/")]), "u", "/p").unwrap_err();
    assert!(
        !e.is_transient() && e.to_string().contains("not followed"),
        "{e}"
    );
    assert!(
        check_status(&head(503, &[]), "u", "/p")
            .unwrap_err()
            .is_transient()
    );
    assert!(check_status(&head(200, &[]), "u", "/p").is_ok());
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let t = HttpTarget {
        tls: None,
        host: "::1".into(),
        port: 8123,
        token: Secret::new("very-secret-token"),
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
    };
    let s = format!("{t:?}");
    assert!(
        !s.contains("very-secret-token") && s.contains("http://[::1]:8123"),
        "{s}"
    );
    assert_eq!(t.host_header(), "[::1]:8123");
}

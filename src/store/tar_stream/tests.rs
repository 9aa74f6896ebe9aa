use super::*;

fn build(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn names(bytes: &[u8]) -> Result<Vec<(String, u64)>, TarError> {
    let mut t = TarStream::new(bytes);
    let mut out = Vec::new();
    while let Some(m) = t.next_member()? {
        out.push((m.name, m.size));
    }
    Ok(out)
}

#[test]
fn buffered_member_data_stops_at_the_member_and_reports_a_short_stream() {
    let first: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    let bytes = build(&[("a.bin", &first), ("b.txt", b"next")]);
    // A small buffer, so the member spans many fills.
    let mut t = TarStream::new(io::BufReader::with_capacity(700, &bytes[..]));
    t.next_member().unwrap().unwrap();
    let mut got = Vec::new();
    {
        let mut data = t.data();
        loop {
            let chunk = data.fill_buf().unwrap();
            if chunk.is_empty() {
                break;
            }
            // Take part of what is offered, as decoders do.
            let n = chunk.len().min(333);
            got.extend_from_slice(&chunk[..n]);
            data.consume(n);
        }
    }
    assert!(got == first, "the member's data, and nothing past it");
    assert_eq!(t.next_member().unwrap().unwrap().name, "b.txt");

    // Cut inside the first member's data: an error, and the stream knows it was short.
    let cut = &bytes[..512 + 4000];
    let mut t = TarStream::new(io::BufReader::with_capacity(700, cut));
    t.next_member().unwrap().unwrap();
    let err = io::copy(&mut t.data(), &mut io::sink());
    let mut sink = Vec::new();
    let mut t2 = TarStream::new(io::BufReader::with_capacity(700, cut));
    t2.next_member().unwrap().unwrap();
    let e = loop {
        let mut data = t2.data();
        match data.fill_buf() {
            Ok([]) => panic!("a short member ended without an error"),
            Ok(chunk) => {
                let n = chunk.len();
                sink.extend_from_slice(chunk);
                data.consume(n);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(sink.len(), 4000);
    assert!(t2.was_truncated());
    assert!(err.is_err());
}

#[test]
fn reads_members_and_long_names() {
    let long = "d/".repeat(120) + "file.txt";
    let bytes = build(&[("a.txt", b"hello"), (&long, b"x")]);
    assert_eq!(
        names(&bytes).unwrap(),
        vec![("a.txt".to_owned(), 5), (long, 1)]
    );
}

#[test]
fn every_truncation_point_is_an_error() {
    let bytes = build(&[("a.txt", &[7u8; 700]), ("b.txt", b"bb")]);
    // The builder writes two zero blocks; every shorter prefix is incomplete.
    for cut in 0..bytes.len() {
        assert!(
            names(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes accepted"
        );
    }
    assert!(names(&bytes).is_ok());
}

#[test]
fn huge_declared_long_name_is_refused_without_allocating() {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 40);
    h.set_cksum();
    let bytes = h.as_bytes().to_vec();
    assert!(matches!(
        names(&bytes),
        Err(TarError::ExtensionTooLarge { .. })
    ));
}

#[test]
fn bad_checksum_and_trailing_garbage() {
    let mut bytes = build(&[("a.txt", b"hello")]);
    bytes[0] ^= 1;
    assert!(matches!(names(&bytes), Err(TarError::BadChecksum { .. })));
    let mut bytes = build(&[("a.txt", b"hello")]);
    bytes.extend_from_slice(b"junk");
    assert!(matches!(names(&bytes), Err(TarError::TrailingData { .. })));
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_numeric(b"00000000017\0"), Some(15));
    assert_eq!(parse_numeric(b"     17 \0\0\0\0"), Some(15));
    assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
    assert_eq!(parse_numeric(b"0009\0"), None);
    assert_eq!(parse_numeric(&[0x80, 0, 0, 1, 0]), Some(256));
    assert_eq!(parse_numeric(&[0xff, 0xff]), None);
    assert_eq!(
        parse_numeric(&[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        None
    );
}

#[test]
fn pax_records() {
    let rec = b"16 path=abc.txt\n10 size=7\n";
    assert_eq!(
        parse_pax(rec, 0).unwrap(),
        (Some("abc.txt".to_owned()), Some(7), None)
    );
    assert!(parse_pax(b"99 path=x\n", 0).is_err());
    assert!(parse_pax(b"x path=x\n", 0).is_err());
}

//! Unit tests of SecureTar decryption: v1 (legacy and standard padding), v2 and v3, built here with
//! the same primitives, and the refusals of wrong passwords, truncation and tampering.

use super::keys::{blake2b_keyed, derive_iv, sha256_100};
use super::*;
use crate::secret::Secret;
use crate::store::{ArchiveError, Level, Verify, VerifyOptions, verify_reader_with};
use aws_lc_rs::digest;
use cbc::cipher::BlockModeEncrypt;
use dryoc::classic::crypto_secretstream_xchacha20poly1305 as secretstream;
use std::io::Write;

const PASSWORD: &str = "pässword 2";

/// A small inner tar.gz holding one file, as bytes.
fn inner_tar_gz(content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "data/configuration.yaml", content)
        .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn cbc_encrypt(key: &[u8; 16], salt: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    assert_eq!(plain.len() % 16, 0);
    let iv = derive_iv(key, salt);
    let mut enc = cbc::Encryptor::<Aes128>::new(&(*key).into(), &iv.into());
    let mut data = plain.to_vec();
    let (blocks, _) = cbc::cipher::InOutBuf::from(&mut data[..]).into_chunks();
    enc.encrypt_blocks_inout(blocks);
    data
}

fn pkcs7(mut data: Vec<u8>) -> Vec<u8> {
    let pad = 16 - data.len() % 16;
    data.extend(std::iter::repeat_n(pad as u8, pad));
    data
}

/// SecureTar v1 as writers before 2025 made it: every unaligned write padded, so the padding of
/// the last deflate write sits before the gzip trailer, which is padded itself.
fn v1_legacy(gz: &[u8]) -> Vec<u8> {
    let body = &gz[..gz.len() - 8];
    let trailer = &gz[gz.len() - 8..];
    let mut plain = Vec::new();
    for write in body.chunks(10240) {
        if write.len() % 16 == 0 {
            plain.extend_from_slice(write);
        } else {
            plain.extend(pkcs7(write.to_vec()));
        }
    }
    plain.extend(pkcs7(trailer.to_vec()));
    let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
    let salt = [7u8; 16];
    let mut out = salt.to_vec();
    out.extend(cbc_encrypt(&key, &salt, &plain));
    out
}

fn v1_standard(gz: &[u8]) -> Vec<u8> {
    let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
    let salt = [9u8; 16];
    let mut out = salt.to_vec();
    out.extend(cbc_encrypt(&key, &salt, &pkcs7(gz.to_vec())));
    out
}

/// SecureTar v3 with the chunks and tags given (`None` = the usual: MESSAGE, ..., FINAL).
fn v3(plain: &[u8], chunk: usize, tags: Option<Vec<u8>>) -> Vec<u8> {
    let argon_salt = [1u8; 16];
    let validation_salt = [2u8; 16];
    let stream_salt = [3u8; 16];
    let mut keys = Keys::new(Secret::new(PASSWORD));
    let root = keys.root_key(&argon_salt).unwrap();
    let validation = blake2b_keyed(&root, &validation_salt).unwrap();
    let stream_key = blake2b_keyed(&root, &stream_salt).unwrap();
    let mut state = secretstream::State::new();
    let mut sheader = [0u8; 24];
    secretstream::crypto_secretstream_xchacha20poly1305_init_push(
        &mut state,
        &mut sheader,
        &stream_key,
    );
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(3);
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&(plain.len() as u64).to_be_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&argon_salt);
    out.extend_from_slice(&validation_salt);
    out.extend_from_slice(validation.as_slice());
    out.extend_from_slice(&stream_salt);
    out.extend_from_slice(&sheader);
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(chunk).collect()
    };
    let n = pieces.len();
    let tags = tags.unwrap_or_else(|| {
        (0..n)
            .map(|i| if i + 1 == n { TAG_FINAL } else { TAG_MESSAGE })
            .collect()
    });
    for (piece, tag) in pieces.iter().zip(tags) {
        let mut ct = vec![0u8; piece.len() + V3_OVERHEAD];
        secretstream::crypto_secretstream_xchacha20poly1305_push(
            &mut state, &mut ct, piece, None, tag,
        )
        .unwrap();
        out.extend(ct);
    }
    out
}

fn decrypt_all(member: &[u8], password: &str) -> Result<Vec<u8>, SecureTarError> {
    let mut keys = Keys::new(Secret::new(password));
    let mut d = Decrypt::new(member, &mut keys, Plain::Gzip)?;
    let mut out = Vec::new();
    d.read_to_end(&mut out)
        .map_err(|e| SecureTarError::from_io(&e).cloned().unwrap())?;
    Ok(out)
}

/// A whole protected backup with one inner member.
fn backup(member: &[u8]) -> Vec<u8> {
    let json = br#"{"slug":"abc123","name":"t","date":"2026-11-26T09:07:39+00:00","protected":true,"homeassistant":{"version":"2026.11.0"}}"#;
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("./backup.json", &json[..]),
        ("./homeassistant.tar.gz", member),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn verify(archive: &[u8], password: &str) -> Result<crate::store::ArchiveSummary, ArchiveError> {
    let mut keys = Keys::new(Secret::new(password));
    verify_reader_with(
        archive,
        "abc123",
        VerifyOptions {
            mode: Verify::Full,
            keys: Some(&mut keys),
            hash: false,
        },
    )
}

#[test]
fn v1_legacy_padding_and_standard_padding_both_verify_fully() {
    let content: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let gz = inner_tar_gz(&content);
    for member in [v1_legacy(&gz), v1_standard(&gz)] {
        let s = verify(&backup(&member), PASSWORD).unwrap();
        assert_eq!((s.level, s.securetar), (Level::Full, Some(1)));
    }
    // The gzip CRC still protects v1: a flipped byte in the middle is refused.
    let mut member = v1_legacy(&gz);
    let mid = member.len() / 2;
    member[mid] ^= 0x40;
    assert!(matches!(
        verify(&backup(&member), PASSWORD),
        Err(ArchiveError::Inner { .. })
    ));
    assert!(matches!(
        verify(&backup(&v1_legacy(&gz)), "other"),
        Err(ArchiveError::WrongPassword { .. })
    ));
}

#[test]
fn v3_reads_every_chunk_and_refuses_truncation_and_misplaced_final() {
    let plain: Vec<u8> = (0..3 * 1000u32).map(|i| (i % 251) as u8).collect();
    let mut good = plain.clone();
    good[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
    let member = v3(&good, V3_CHUNK, None);
    assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), good);
    assert_eq!(
        decrypt_all(&member, "wrong").unwrap_err(),
        SecureTarError::WrongPassword
    );

    // Several chunks, as large backups have (small chunks keep the test fast).
    let big: Vec<u8> = (0..(V3_CHUNK * 2 + 100)).map(|i| (i % 253) as u8).collect();
    let mut big = big;
    big[..3].copy_from_slice(&[0x1f, 0x8b, 0x08]);
    let member = v3(&big, V3_CHUNK, None);
    assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), big);

    // Cut at a chunk boundary: the final chunk is missing.
    let cut = V3_HEADER + 2 * (V3_CHUNK + V3_OVERHEAD);
    assert!(matches!(
        decrypt_all(&member[..cut], PASSWORD),
        Err(SecureTarError::Truncated(_))
    ));
    // Cut inside a chunk: it no longer authenticates.
    assert!(matches!(
        decrypt_all(&member[..cut - 1000], PASSWORD),
        Err(SecureTarError::Damaged(_))
    ));
    // No chunk tagged FINAL at all.
    let no_final = v3(&big, V3_CHUNK, Some(vec![TAG_MESSAGE; 3]));
    assert!(matches!(
        decrypt_all(&no_final, PASSWORD),
        Err(SecureTarError::Truncated(_))
    ));
    // FINAL on the first chunk, more after it.
    let early = v3(
        &big,
        V3_CHUNK,
        Some(vec![TAG_FINAL, TAG_MESSAGE, TAG_FINAL]),
    );
    let err = decrypt_all(&early, PASSWORD).unwrap_err();
    assert!(err.to_string().contains("early final"), "{err}");
    // A header that states another size.
    let mut wrong_size = member.clone();
    wrong_size[23] ^= 1;
    assert!(decrypt_all(&wrong_size, PASSWORD).is_err());
    // A flipped bit anywhere in the data.
    let mut flipped = member.clone();
    flipped[V3_HEADER + V3_CHUNK + 5] ^= 1;
    assert!(matches!(
        decrypt_all(&flipped, PASSWORD),
        Err(SecureTarError::Damaged(_))
    ));
}

#[test]
fn v2_truncation_is_refused() {
    let gz = inner_tar_gz(b"hello");
    let key: [u8; 16] = sha256_100(PASSWORD.as_bytes())[..16].try_into().unwrap();
    let salt = [5u8; 16];
    let mut member = Vec::new();
    member.extend_from_slice(MAGIC);
    member.push(2);
    member.extend_from_slice(&[0u8; 6]);
    member.extend_from_slice(&(gz.len() as u64).to_be_bytes());
    member.extend_from_slice(&[0u8; 8]);
    member.extend_from_slice(&salt);
    member.extend(cbc_encrypt(&key, &salt, &pkcs7(gz.clone())));
    assert_eq!(decrypt_all(&member, PASSWORD).unwrap(), gz);
    assert!(verify(&backup(&member), PASSWORD).is_ok());
    for cut in [member.len() - 16, member.len() - 5, 40] {
        assert!(decrypt_all(&member[..cut], PASSWORD).is_err(), "cut {cut}");
        assert!(
            verify(&backup(&member[..cut]), PASSWORD).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn legacy_iv_and_key_are_iterated_sha256() {
    // One SHA-256 of "" is e3b0...; the 100-fold iteration must differ from a single one.
    let once = digest::digest(&digest::SHA256, b"");
    assert_ne!(sha256_100(b"")[..], once.as_ref()[..]);
    let mut k = Keys::new(Secret::new("pw"));
    assert_eq!(*k.legacy_key(), *k.legacy_key());
}

#[test]
fn gzip_trailer_layouts() {
    let crc = 0x0102_0304u32;
    let len = 77u32;
    let mut t = Vec::new();
    t.extend_from_slice(&crc.to_le_bytes());
    t.extend_from_slice(&len.to_le_bytes());
    assert!(GzipTrailer::check(&t, crc, len).is_ok());
    let mut padded = t.clone();
    padded.extend_from_slice(&[8u8; 8]);
    assert!(GzipTrailer::check(&padded, crc, len).is_ok());
    let mut legacy = vec![3u8; 3];
    legacy.extend_from_slice(&t);
    legacy.extend_from_slice(&[8u8; 8]);
    assert!(GzipTrailer::check(&legacy, crc, len).is_ok());
    assert!(GzipTrailer::check(&legacy, crc ^ 1, len).is_err());
    assert!(GzipTrailer::check(&t[..5], crc, len).is_err());
}

//! The transport ciphers: AES-CTR and AES-GCM.

use super::*;

// === The CTR cipher ===

#[test]
fn ctr_is_continuous_across_arbitrary_splits() {
    let key = [7u8; 32];
    let (iv_a, iv_b) = ([1u8; 16], [2u8; 16]);
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut whole = data.clone();
    CtrCipher::new(&key, &iv_a, &iv_b)
        .unwrap()
        .encrypt(&mut whole);
    for splits in [vec![1usize], vec![15, 16, 17], vec![3, 500, 1], vec![999]] {
        let mut c = CtrCipher::new(&key, &iv_a, &iv_b).unwrap();
        let mut buf = data.clone();
        let mut rest: &mut [u8] = &mut buf;
        let mut i = 0;
        while !rest.is_empty() {
            let n = splits[i % splits.len()].min(rest.len());
            let (head, tail) = rest.split_at_mut(n);
            c.encrypt(head);
            rest = tail;
            i += 1;
        }
        assert_eq!(buf, whole, "{splits:?}");
    }
    // Directions are independent keystreams.
    let mut c = CtrCipher::new(&key, &iv_a, &iv_b).unwrap();
    let mut x = data.clone();
    c.decrypt(&mut x);
    assert_ne!(x, whole);
}

#[test]
fn ctr_counter_carries_across_128_bits() {
    // IV = ff..ff: the second block's counter wraps to 00..00, as in Java's CTR.
    let key = [9u8; 16];
    let iv = [0xFFu8; 16];
    let mut c = CtrCipher::new(&key, &iv, &iv).unwrap();
    let mut two = [0u8; 32];
    c.encrypt(&mut two);
    let mut c0 = CtrCipher::new(&key, &[0u8; 16], &[0u8; 16]).unwrap();
    let mut one = [0u8; 16];
    c0.encrypt(&mut one);
    assert_eq!(two[16..], one);
}

// === The GCM transport ===

/// A server and a client GCM transport from one handshake. Deterministic: every call with
/// the same version derives the same key.
fn gcm_pair(version: AuthEngineVersion) -> (TransportCipher, TransportCipher) {
    let (client, c) = challenge_for("app-1", "secret", version);
    let mut auth = server(app1_secrets(), version, true).with_cipher(CipherMode::Gcm);
    let Ok(AuthStep::Done {
        reply,
        transport: Some(server_cipher),
        ..
    }) = auth.step(&c, &mut seeded(5))
    else {
        panic!()
    };
    let client_cipher = client.with_cipher(CipherMode::Gcm).finish(&reply).unwrap();
    assert!(matches!(server_cipher, TransportCipher::Gcm(_)));
    (server_cipher, client_cipher)
}

#[test]
fn gcm_round_trip_any_size_any_split() {
    use bytes::BytesMut;
    for version in [AuthEngineVersion::V1, AuthEngineVersion::V2] {
        let (mut server_cipher, mut client_cipher) = gcm_pair(version);
        let sizes = [0usize, 1, 100, 32752, 32753, 65504, 65505, 100_000];
        let messages: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        let mut wire = BytesMut::new();
        let mut random = seeded(11);
        for m in &messages {
            let before = wire.len();
            server_cipher.seal(m, &mut random, &mut wire).unwrap();
            // The length prefix counts the whole message.
            let total = u64::from_be_bytes(wire[before..before + 8].try_into().unwrap());
            assert_eq!(total as usize, wire.len() - before);
            let header = if version == AuthEngineVersion::V1 {
                40
            } else {
                24
            };
            assert_eq!(wire[before + 8] as usize, header);
        }
        let expected: Vec<u8> = messages.concat();
        for step in [1usize, 7, 8, 41, 4096, 32768, 1 << 20] {
            let mut input = wire.clone();
            let mut pending = BytesMut::new();
            let mut plain = BytesMut::new();
            while !input.is_empty() {
                let n = step.min(input.len());
                pending.extend_from_slice(&input.split_to(n));
                client_cipher.open(&mut pending, &mut plain).unwrap();
                // Never more than one segment of ciphertext is held back.
                assert!(pending.len() <= 32768 + 8 + 40);
            }
            assert_eq!(plain.len(), expected.len(), "step {step}");
            assert!(plain[..] == expected[..], "step {step}");
            // Every message was consumed: the receiver is back at a message boundary.
            assert!(pending.is_empty());
        }
    }
}

#[test]
fn gcm_rejects_tampering_and_malformed_headers() {
    use bytes::BytesMut;
    let (mut server_cipher, _) = gcm_pair(AuthEngineVersion::V2);
    let mut wire = BytesMut::new();
    server_cipher
        .seal(b"a shuffle block", &mut seeded(1), &mut wire)
        .unwrap();
    for i in 0..wire.len() {
        let mut bad = wire.clone();
        bad[i] ^= 0x01;
        let (_, mut client_cipher) = gcm_pair(AuthEngineVersion::V2);
        let mut plain = BytesMut::new();
        match client_cipher.open(&mut bad, &mut plain) {
            // A changed length may leave the message incomplete (waiting for bytes).
            Ok(()) => assert!(i < 8 && plain.is_empty(), "byte {i} accepted"),
            Err(e) => assert_eq!(e.kind(), "transport", "byte {i}: {e:?}"),
        }
    }
    // A length shorter than the header, and a segment shorter than a tag.
    for total in [0u64, 31, 24 + 8 + 5] {
        let (_, mut client_cipher) = gcm_pair(AuthEngineVersion::V2);
        let mut bad = BytesMut::from(&total.to_be_bytes()[..]);
        bad.extend_from_slice(&wire[8..32]);
        bad.extend_from_slice(&[0u8; 40]);
        let err = client_cipher
            .open(&mut bad, &mut BytesMut::new())
            .unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{total}: {err:?}");
    }
}

#[test]
fn ctr_transport_seal_and_open_match_in_place() {
    use bytes::BytesMut;
    let (client, c) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    let Ok(AuthStep::Done {
        reply,
        transport: Some(mut server_cipher),
        ..
    }) = server(app1_secrets(), AuthEngineVersion::V1, true).step(&c, &mut seeded(5))
    else {
        panic!()
    };
    let mut client_cipher = client.finish(&reply).unwrap();
    let mut wire = BytesMut::new();
    client_cipher
        .seal(b"hello ", &mut seeded(0), &mut wire)
        .unwrap();
    client_cipher
        .seal(b"world", &mut seeded(0), &mut wire)
        .unwrap();
    assert_eq!(wire.len(), 11);
    let mut plain = BytesMut::from(&b">"[..]);
    let mut first = wire.split_to(4);
    server_cipher.open(&mut first, &mut plain).unwrap();
    server_cipher.open(&mut wire, &mut plain).unwrap();
    assert_eq!(&plain[..], b">hello world");
    assert!(first.is_empty() && wire.is_empty());
    assert_eq!(
        CipherMode::from_spark_name("aes/gcm/nopadding"),
        Some(CipherMode::Gcm)
    );
    assert_eq!(
        CipherMode::from_spark_name("AES/CTR/NoPadding"),
        Some(CipherMode::Ctr)
    );
    assert_eq!(CipherMode::from_spark_name("AES/CBC"), None);
}

//! AuthEngine: Appendix A.4 vectors, server round trips and failures, protocol selection.

use super::*;

// === Appendix A.4: AuthEngine vectors from Spark 4.3.0 (identical in 3.5.9) ===

struct Vector {
    version: AuthEngineVersion,
    client_private: &'static str,
    challenge: &'static str,
    response: &'static str,
    key: &'static str,
    iv_a: &'static str,
    iv_b: &'static str,
    hello: &'static str,
}

const V1: Vector = Vector {
    version: AuthEngineVersion::V1,
    client_private: "cfc7eb865754816cb701c356b8ad3c17a94f5b7980ab16dd4dd63b8e7a473eab",
    challenge: "fb 00000005 6170702d31 00000010 da5ce3e340dd6a294259eb7b28dd2804 0000003c
        f7f6ea7a8ebdd1a82f8ce14b62bd4341bae98baf41962d17096ae36ab4c53125e34457091aaae8ee5edda85b668b9b19ae54629e876a645b6f0c68c8",
    response: "fb 00000005 6170702d31 00000010 8afd8e42993f981792ecc7cb5497020e 0000003c
        60883e04e546ba225262fad999809e8a1f5eb0ece4718c8d1c9f643404f2d2700d7ff986e8f5c359835fd6b6f2e40871081acefe66df1e33a7a5897d",
    key: "bdd98fd9a01586ea5b736f5ace99122184014fc55193dd25c6da4543fe0c5824",
    iv_a: "9495a803cbf16d2b6db23b75e3cca1bd",
    iv_b: "e14aac7dda8cd6f4a4cf56c72946a0d8",
    hello: "ddc8b7f4e75557cb443a67",
};

const V2: Vector = Vector {
    version: AuthEngineVersion::V2,
    client_private: "5f53eb61b4da15755291f006d5510aec465f512a3dac812bace3a6ac266019be",
    challenge: "fb000000056170702d31000000101c4d2b07c0357daba4c8119828d992480000003c4d640a06554b57b449d519bdc5322711fe3ed5302dbf28335dc536fe490d2cef6266b2d7b5fc43f1a98c36b22e8c8dac5f4fde0d90bf9a5429e784fb",
    response: "fb000000056170702d310000001021d93ebe3708112fd392bbf95f20c94b0000003c890d988567233a0377b26c0a84c98853f652703d7c9fdc00e036b164b83b0aabc4119025eadb1da186318d9df3111f5efa043bce3ad406c0e9ceafba",
    key: "934843a92cf74c3a68dea8dc8f69289c",
    iv_a: "a540c2520da3b411ce0f1342a149c238",
    iv_b: "8f7fb6f14631e61e2b3eab0dd4448fe2",
    hello: "46ecdf90a339c26d9aa099",
};

/// The random chunks that make our client reproduce the vector's challenge byte for byte:
/// private key, salt1, the AES-GCM nonce (the ciphertext's first 12 bytes).
fn client_random(v: &Vector) -> Vec<Vec<u8>> {
    let c = unhex(v.challenge);
    let msg = AuthMessage::decode(&c).unwrap();
    vec![
        unhex(v.client_private),
        msg.salt.to_vec(),
        msg.ciphertext[..12].to_vec(),
    ]
}

#[test]
fn a4_v1_kek1_and_client_public_key() {
    let c = unhex(V1.challenge);
    let msg = AuthMessage::decode(&c).unwrap();
    assert_eq!(msg.app_id, "app-1");
    assert_eq!(msg.encoded_len(), 94);
    let secret = Secret::from("secret");
    let (kek1, aad1) = engine::derive_kek(&secret, msg.app_id, msg.salt, &[]).unwrap();
    assert_eq!(hex(kek1.as_ref()), "5934c525b4853d403877bf78019a6524");
    assert_eq!(aad1, [b"app-1".as_slice(), msg.salt].concat());
    let public = engine::open_public_key(&secret, &msg, &[]).unwrap();
    assert_eq!(
        hex(&public),
        "941b163c73ac4709b0ddfd94e6860982745089261924f40bdfe6ccc38467890a"
    );
    // The response decrypts under kek2 whose transcript is the whole encoded challenge.
    let s = unhex(V1.response);
    let smsg = AuthMessage::decode(&s).unwrap();
    let server_public = engine::open_public_key(&secret, &smsg, &c).unwrap();
    assert_eq!(
        hex(&server_public),
        "bb3736846ba0a153334bef27761d2b4abadbd2057a037e1787be9400f2c91f69"
    );
    // ... and not with an empty transcript.
    assert!(engine::open_public_key(&secret, &smsg, &[]).is_err());
}

fn check_vector(v: &Vector) {
    let secret = Secret::from("secret");
    let (client, challenge) = ClientAuth::challenge(
        "app-1",
        secret.clone(),
        v.version,
        &mut scripted(client_random(v)),
    )
    .unwrap();
    assert_eq!(hex(&challenge), hex(&unhex(v.challenge)), "challenge");

    // Key schedule from the client's side.
    let s = unhex(v.response);
    let smsg = AuthMessage::decode(&s).unwrap();
    let server_public = engine::open_public_key(&secret, &smsg, &challenge).unwrap();
    let private =
        x25519_dalek::StaticSecret::from(<[u8; 32]>::try_from(unhex(v.client_private)).unwrap());
    let shared = private.diffie_hellman(&x25519_dalek::PublicKey::from(server_public));
    let transcript = [challenge.as_slice(), &s].concat();
    let keys = SessionKeys::derive(shared.as_bytes(), &transcript, v.version).unwrap();
    assert_eq!(hex(&keys.key), v.key, "key");
    assert_eq!(hex(&keys.iv_a), v.iv_a, "ivA");
    assert_eq!(hex(&keys.iv_b), v.iv_b, "ivB");
    if v.version == AuthEngineVersion::V1 {
        assert_eq!(hex(shared.as_bytes()), v.key);
    }

    // The client's cipher encrypts client → server bytes as Spark's did.
    let mut cipher = ctr(client.finish(&s).unwrap());
    let mut hello = *b"hello world";
    cipher.encrypt(&mut hello);
    assert_eq!(hex(&hello), v.hello, "client → server bytes");
}

#[test]
fn a4_v1_key_schedule_and_ctr_bytes() {
    check_vector(&V1);
}

#[test]
fn a4_v2_key_schedule_and_ctr_bytes() {
    check_vector(&V2);
}

#[test]
fn a4_server_answers_the_recorded_challenge() {
    for v in [&V1, &V2] {
        let (client, challenge) = ClientAuth::challenge(
            "app-1",
            Secret::from("secret"),
            v.version,
            &mut scripted(client_random(v)),
        )
        .unwrap();
        let mut auth = server(app1_secrets(), v.version, true);
        let AuthStep::Done {
            reply,
            app_id,
            transport,
        } = auth.step(&challenge, &mut seeded(7)).unwrap()
        else {
            panic!("AuthEngine finishes in one step")
        };
        assert_eq!(app_id, "app-1");
        assert!(auth.is_done());
        let mut server_cipher = ctr(transport.unwrap());
        let mut client_cipher = ctr(client.finish(&reply).unwrap());

        let mut up = *b"hello world";
        client_cipher.encrypt(&mut up);
        server_cipher.decrypt(&mut up);
        assert_eq!(&up, b"hello world");
        let mut down = *b"the reply, server to client";
        server_cipher.encrypt(&mut down);
        assert_ne!(&down, b"the reply, server to client");
        client_cipher.decrypt(&mut down);
        assert_eq!(&down, b"the reply, server to client");
    }
}

// === AuthEngine server: round trips and failures ===

#[test]
fn auth_engine_round_trip_both_versions_with_shared_secret() {
    for version in [AuthEngineVersion::V1, AuthEngineVersion::V2] {
        let (client, c) = challenge_for("spark-0123abcd", "s3cr3t", version);
        let mut auth = server(
            StaticSecrets::shared(Secret::from("s3cr3t")),
            version,
            false,
        );
        let AuthStep::Done {
            reply,
            app_id,
            transport: Some(server_cipher),
        } = auth.step(&c, &mut seeded(9)).unwrap()
        else {
            panic!("expected Done with a cipher")
        };
        assert_eq!(app_id, "spark-0123abcd");
        let mut server_cipher = ctr(server_cipher);
        let mut client_cipher = ctr(client.finish(&reply).unwrap());
        let mut buf = vec![0xA5u8; 1000];
        client_cipher.encrypt(&mut buf);
        server_cipher.decrypt(&mut buf);
        assert!(buf.iter().all(|&b| b == 0xA5));
        assert!(matches!(
            auth.step(&c, &mut seeded(1)),
            Err(Error::Finished { state: "completed" })
        ));
    }
}

#[test]
fn auth_engine_versions_must_agree() {
    let (client, c) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    let mut auth = server(app1_secrets(), AuthEngineVersion::V2, true);
    let Ok(AuthStep::Done {
        reply,
        transport: Some(server_cipher),
        ..
    }) = auth.step(&c, &mut seeded(9))
    else {
        panic!()
    };
    let mut server_cipher = ctr(server_cipher);
    let mut client_cipher = ctr(client.finish(&reply).unwrap());
    let mut buf = *b"hello world";
    client_cipher.encrypt(&mut buf);
    server_cipher.decrypt(&mut buf);
    assert_ne!(&buf, b"hello world");
}

#[test]
fn auth_engine_wrong_secret_fails() {
    let (_, c) = challenge_for("app-1", "not the secret", AuthEngineVersion::V1);
    let mut auth = server(app1_secrets(), AuthEngineVersion::V1, true);
    let err = auth.step(&c, &mut seeded(9)).unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert!(err.to_string().starts_with("Authentication failed."));
    assert!(!err.to_string().contains("secret\""));
    // Sticky.
    let (_, good) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    assert!(matches!(
        auth.step(&good, &mut seeded(1)),
        Err(Error::Finished { state: "failed" })
    ));
}

#[test]
fn auth_engine_unknown_app() {
    let (_, c) = challenge_for("app-2", "secret", AuthEngineVersion::V1);
    let mut auth = server(app1_secrets(), AuthEngineVersion::V1, true);
    let err = auth.step(&c, &mut seeded(9)).unwrap_err();
    assert_eq!(
        err,
        Error::UnknownApp {
            app: "app-2".into()
        }
    );
    assert_eq!(err.kind(), "unknown_app");
}

#[test]
fn auth_engine_app_id_is_bound_to_the_key() {
    // A challenge made for app-1 with app-1's secret, relabelled as app-3 (which has the same
    // secret here): the AAD and KEK no longer match.
    let secrets = app1_secrets().with_app("app-3", Secret::from("secret"));
    let (_, c) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    let msg = AuthMessage::decode(&c).unwrap();
    let mut forged = Vec::new();
    AuthMessage {
        app_id: "app-3",
        ..msg
    }
    .encode(&mut forged);
    let mut auth = server(secrets, AuthEngineVersion::V1, true);
    assert!(matches!(
        auth.step(&forged, &mut seeded(9)),
        Err(Error::Failed { .. })
    ));
}

#[test]
fn client_refuses_a_response_for_another_app() {
    let secrets = StaticSecrets::shared(Secret::from("secret"));
    let (client, _) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    let (_, other) = challenge_for("app-9", "secret", AuthEngineVersion::V1);
    let mut auth = server(secrets, AuthEngineVersion::V1, true);
    let Ok(AuthStep::Done { reply, .. }) = auth.step(&other, &mut seeded(2)) else {
        panic!()
    };
    assert!(matches!(client.finish(&reply), Err(Error::Failed { .. })));
}

#[test]
fn auth_engine_tampered_bytes_fail_cleanly() {
    let (_, c) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    // Flip every bit of every byte once: nothing panics, nothing authenticates except the
    // original.
    for i in 0..c.len() {
        for bit in 0..8 {
            let mut t = c.clone();
            t[i] ^= 1 << bit;
            let mut auth = server(app1_secrets(), AuthEngineVersion::V1, true);
            match auth.step(&t, &mut seeded(9)) {
                Ok(_) => panic!("tampered byte {i} bit {bit} authenticated"),
                Err(e) => assert!(e.caused_by_peer(), "{e:?}"),
            }
        }
    }
}

#[test]
fn auth_engine_truncations_are_bad_messages() {
    let (_, c) = challenge_for("app-1", "secret", AuthEngineVersion::V1);
    for len in 1..c.len() {
        let mut auth = server(app1_secrets(), AuthEngineVersion::V1, true);
        let err = auth.step(&c[..len], &mut seeded(9)).unwrap_err();
        assert!(
            matches!(err, Error::BadMessage { .. }),
            "truncated to {len}: {err:?}"
        );
    }
    let mut longer = c.clone();
    longer.push(0);
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&longer, &mut seeded(9))
        .unwrap_err();
    assert!(matches!(err, Error::BadMessage { .. }), "{err:?}");
}

#[test]
fn auth_engine_hostile_lengths() {
    let cases: Vec<Vec<u8>> = vec![
        // Huge app id length.
        [&[0xFB][..], &0x7FFF_FFFFi32.to_be_bytes(), b"app"].concat(),
        // Negative app id length.
        [&[0xFB][..], &(-1i32).to_be_bytes()].concat(),
        // Huge salt length.
        [
            &[0xFB][..],
            &1i32.to_be_bytes(),
            b"a",
            &i32::MAX.to_be_bytes(),
        ]
        .concat(),
        // Negative ciphertext length.
        [
            &[0xFB][..],
            &1i32.to_be_bytes(),
            b"a",
            &0i32.to_be_bytes(),
            &(-5i32).to_be_bytes(),
        ]
        .concat(),
        // Invalid UTF-8 app id.
        [
            &[0xFB][..],
            &2i32.to_be_bytes(),
            &[0xC3, 0x28],
            &0i32.to_be_bytes(),
            &0i32.to_be_bytes(),
        ]
        .concat(),
        // Over-long app id (present in full).
        [
            &[0xFB][..],
            &2000i32.to_be_bytes(),
            &[b'a'; 2000][..],
            &0i32.to_be_bytes(),
            &0i32.to_be_bytes(),
        ]
        .concat(),
    ];
    for case in cases {
        let err = server(app1_secrets(), AuthEngineVersion::V1, true)
            .step(&case, &mut seeded(9))
            .unwrap_err();
        assert!(matches!(err, Error::BadMessage { .. }), "{err:?}");
        assert!(err.to_string().len() < 400);
    }
    // Well-formed but with an empty or short ciphertext, or a non-32-byte "public key".
    let secret = Secret::from("secret");
    for ct_len in [0usize, 12, 27] {
        let mut m = Vec::new();
        AuthMessage {
            app_id: "app-1",
            salt: &[0; 16],
            ciphertext: &vec![0; ct_len],
        }
        .encode(&mut m);
        let err = server(app1_secrets(), AuthEngineVersion::V1, true)
            .step(&m, &mut seeded(9))
            .unwrap_err();
        assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    }
    let _ = secret;
}

#[test]
fn low_order_client_key_is_refused() {
    // A validly encrypted all-zero public key: the shared secret would be all zeros.
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let secret = Secret::from("secret");
    let salt = [1u8; 16];
    let (kek, aad) = engine::derive_kek(&secret, "app-1", &salt, &[]).unwrap();
    let gcm = aes_gcm::Aes128Gcm::new_from_slice(kek.as_ref()).unwrap();
    let nonce = [2u8; 12];
    let sealed = gcm
        .encrypt(
            &aes_gcm::Nonce::from(nonce),
            Payload {
                msg: &[0u8; 32],
                aad: &aad,
            },
        )
        .unwrap();
    let mut m = Vec::new();
    AuthMessage {
        app_id: "app-1",
        salt: &salt,
        ciphertext: &[&nonce[..], &sealed].concat(),
    }
    .encode(&mut m);
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&m, &mut seeded(9))
        .unwrap_err();
    assert_eq!(
        err,
        Error::Failed {
            reason: "The peer's public key is not acceptable."
        }
    );
}

// === Protocol selection ===

#[test]
fn first_message_selects_the_protocol() {
    let sasl_first = SaslMessage {
        app_id: "app-1",
        token: b"",
    }
    .encode();
    // SASL fallback off: only AuthEngine.
    let err = server(app1_secrets(), AuthEngineVersion::V1, false)
        .step(&sasl_first, &mut seeded(1))
        .unwrap_err();
    assert_eq!(err, Error::UnknownChallenge { tag: Some(0xEA) });
    assert_eq!(err.to_string(), "Unknown challenge message.");
    // SASL fallback on: a challenge.
    let step = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&sasl_first, &mut seeded(1))
        .unwrap();
    assert!(matches!(step, AuthStep::Continue(_)));
    // A block-transfer message (RegisterExecutor = type 0) before auth.
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&[0, 0, 0, 0, 5], &mut seeded(1))
        .unwrap_err();
    assert_eq!(err, Error::NotSasl { tag: Some(0) });
    assert!(err.to_string().starts_with("Expected SaslMessage"));
    let err = server(app1_secrets(), AuthEngineVersion::V1, false)
        .step(&[], &mut seeded(1))
        .unwrap_err();
    assert_eq!(err, Error::UnknownChallenge { tag: None });
    assert!(is_auth_payload(&sasl_first));
    assert!(!is_auth_payload(&[0, 1]));
}

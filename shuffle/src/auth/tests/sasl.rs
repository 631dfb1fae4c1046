//! SASL DIGEST-MD5: recorded JDK exchanges, our server and client, malformed responses.

use base64::prelude::{BASE64_STANDARD, Engine as _};

use super::*;

// === DIGEST-MD5 ===

/// An exchange recorded between the JDK's DIGEST-MD5 client and server as Spark 4.3.0 sets
/// them up (SparkSaslClient / SparkSaslServer, secret "secret").
const JDK_NONCE: &str = "FEHUry1T0lW/jSJ6SYZKA3zsFRq7F1CXkaR2JSay";
const JDK_RESPONSE: &str = "charset=utf-8,username=\"c3BhcmtTYXNsVXNlcg==\",realm=\"default\",nonce=\"FEHUry1T0lW/jSJ6SYZKA3zsFRq7F1CXkaR2JSay\",nc=00000001,cnonce=\"R4esg6JDzpKSBG+MtS8r5/gMeKmKgp5KDXk+2s/O\",digest-uri=\"null/default\",maxbuf=65536,response=b0cfa00768fe38121e371a2382425b67,qop=auth";
const JDK_RSPAUTH: &str = "rspauth=0b24ada478fbe15639264a7c0d97bb78";

/// The same with a 64-character secret (Spark's generated secrets are 64 hex characters),
/// whose base64 password has a line break.
const JDK_LONG_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const JDK_LONG_NONCE: &str = "7d20HdAI00qyps0wR69kChqxCSegmOfUIyKGknn6";
const JDK_LONG_RESPONSE: &str = "charset=utf-8,username=\"c3BhcmtTYXNsVXNlcg==\",realm=\"default\",nonce=\"7d20HdAI00qyps0wR69kChqxCSegmOfUIyKGknn6\",nc=00000001,cnonce=\"8TK1LOhJHYqJHG0d3+SF/lLGmB6mQs0LK7PUPdVL\",digest-uri=\"null/default\",maxbuf=65536,response=b8f187c5a8bc6dfc34e0a2c4b6343ca9,qop=auth";
const JDK_LONG_RSPAUTH: &str = "rspauth=6154fe3d10af710521f034a5b426812b";

/// A [`ServerAuth`] driven to the point where it sent a challenge with the nonce whose raw
/// bytes are `nonce_b64` decoded.
fn sasl_server_with_nonce(secret: &str, nonce_b64: &str) -> ServerAuth {
    let raw = BASE64_STANDARD.decode(nonce_b64).unwrap();
    let mut auth = server(
        StaticSecrets::shared(Secret::from(secret)),
        AuthEngineVersion::V1,
        true,
    );
    let first = SaslMessage {
        app_id: "app-1",
        token: b"",
    }
    .encode();
    let AuthStep::Continue(challenge) = auth.step(&first, &mut scripted(vec![raw])).unwrap() else {
        panic!()
    };
    assert_eq!(
        std::str::from_utf8(&challenge).unwrap(),
        format!(
            "realm=\"default\",nonce=\"{nonce_b64}\",qop=\"auth\",charset=utf-8,algorithm=md5-sess"
        )
    );
    auth
}

fn sasl(token: &[u8]) -> Vec<u8> {
    SaslMessage {
        app_id: "app-1",
        token,
    }
    .encode()
}

#[test]
fn digest_md5_verifies_recorded_jdk_exchanges() {
    for (secret, nonce, response, rspauth) in [
        ("secret", JDK_NONCE, JDK_RESPONSE, JDK_RSPAUTH),
        (
            JDK_LONG_SECRET,
            JDK_LONG_NONCE,
            JDK_LONG_RESPONSE,
            JDK_LONG_RSPAUTH,
        ),
    ] {
        let mut auth = sasl_server_with_nonce(secret, nonce);
        let step = auth
            .step(&sasl(response.as_bytes()), &mut seeded(1))
            .unwrap();
        let AuthStep::Done {
            reply,
            app_id,
            transport,
        } = step
        else {
            panic!()
        };
        assert_eq!(std::str::from_utf8(&reply).unwrap(), rspauth);
        assert_eq!(app_id, "app-1");
        assert!(transport.is_none());
    }
}

#[test]
fn digest_md5_wrong_password_fails() {
    let mut auth = sasl_server_with_nonce("another secret", JDK_NONCE);
    let err = auth
        .step(&sasl(JDK_RESPONSE.as_bytes()), &mut seeded(1))
        .unwrap_err();
    assert!(matches!(err, Error::Sasl { .. }), "{err:?}");
    assert!(err.to_string().contains("mismatched response"), "{err}");
}

#[test]
fn digest_md5_rfc2831_example() {
    // RFC 2831 §4's example (md5-sess, qop=auth), through the same computation.
    let response = digest::testing::rfc_response(
        "chris",
        "elwood.innosoft.com",
        "secret",
        "OA6MG9tEQGm2hh",
        "OA6MHXh6VqTrRk",
        "imap/elwood.innosoft.com",
    );
    assert_eq!(
        response,
        (
            "d388dad90d4bbd760a152321f2143af7".to_owned(),
            "ea40f60335c427b5527b84dbabcdfffd".to_owned()
        )
    );
}

/// A digest-response as the JDK client writes it, for `nonce`, with our own computation.
fn client_token(password_b64: &str, nonce: &str, qop: &str, extra: &str) -> String {
    let cnonce = "Y25vbmNl";
    let uri = "null/default";
    let response = digest::testing::client_response(password_b64, nonce, cnonce, uri);
    format!(
        "charset=utf-8,username=\"{SASL_USER}\",realm=\"default\",nonce=\"{nonce}\",nc=00000001,\
         cnonce=\"{cnonce}\",digest-uri=\"{uri}\",maxbuf=65536,response={response},qop={qop}{extra}"
    )
}

#[test]
fn digest_md5_test_client_authenticates_and_variants() {
    let password = digest::base64(b"secret", false);
    let ok = client_token(&password, JDK_NONCE, "auth", "");
    let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
    assert!(matches!(
        auth.step(&sasl(ok.as_bytes()), &mut seeded(1)),
        Ok(AuthStep::Done { .. })
    ));

    // Quoted values with escapes and odd spacing parse the same.
    let spaced = ok
        .replace("username=\"", " username = \"")
        .replace("realm=\"default\"", "realm=\"de\\fault\" ,, ");
    let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
    assert!(
        matches!(
            auth.step(&sasl(spaced.as_bytes()), &mut seeded(1)),
            Ok(AuthStep::Done { .. })
        ),
        "{spaced}"
    );

    // auth-conf / auth-int are refused clearly.
    for qop in ["auth-conf", "auth-int"] {
        let token = client_token(&password, JDK_NONCE, qop, "");
        let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
        let err = auth
            .step(&sasl(token.as_bytes()), &mut seeded(1))
            .unwrap_err();
        assert_eq!(err, Error::UnsupportedQop { qop: qop.into() });
        assert!(err.to_string().contains("enableSaslEncryption"));
    }

    // Wrong nonce, nonce count, realm, user, authzid, duplicate directive.
    let bad = [
        ok.replace(JDK_NONCE, "AAAA"),
        ok.replace("nc=00000001", "nc=00000002"),
        ok.replace("realm=\"default\"", "realm=\"other\""),
        ok.replace(SASL_USER, "c3BhcmsK"),
        format!("{ok},authzid=\"someone\""),
        format!("{ok},nonce=\"{JDK_NONCE}\""),
        ok.replace(",cnonce=\"Y25vbmNl\"", ""),
        ok.replace("charset=utf-8", "charset=latin1"),
    ];
    for token in bad {
        let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
        let err = auth
            .step(&sasl(token.as_bytes()), &mut seeded(1))
            .unwrap_err();
        assert!(matches!(err, Error::Sasl { .. }), "{token}: {err:?}");
    }
}

#[test]
fn digest_md5_garbage_never_panics() {
    let ok = client_token(&digest::base64(b"secret", false), JDK_NONCE, "auth", "");
    let mut inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"=".to_vec(),
        b",,,,".to_vec(),
        b"a".to_vec(),
        b"a=\"unterminated".to_vec(),
        b"a=\"x\\".to_vec(),
        b"a=\"x\"junk,b=c".to_vec(),
        vec![0xFF, 0xFE],
        vec![b'a'; 5000],
        "é=ü,\"=\"".as_bytes().to_vec(),
    ];
    // Every cut before the end of `response=` fails (after it, only the default qop is lost).
    for cut in 0..ok.find(",qop=").unwrap() {
        inputs.push(ok.as_bytes()[..cut].to_vec());
    }
    for input in inputs {
        let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
        let result = auth.step(&sasl(&input), &mut seeded(1));
        assert!(result.is_err(), "{:?}", String::from_utf8_lossy(&input));
    }
    // A SASL first message with an initial response, or a truncated one.
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(&sasl(b"x"), &mut seeded(1))
        .unwrap_err();
    assert!(matches!(err, Error::Sasl { .. }));
    let first = sasl(b"");
    for len in 1..first.len() {
        let err = server(app1_secrets(), AuthEngineVersion::V1, true)
            .step(&first[..len], &mut seeded(1))
            .unwrap_err();
        assert!(matches!(err, Error::BadMessage { .. }), "{len}: {err:?}");
    }
    // Second message that is not SASL.
    let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
    assert_eq!(
        auth.step(&[0xFB, 0], &mut seeded(1)).unwrap_err(),
        Error::NotSasl { tag: Some(0xFB) }
    );
}

#[test]
fn digest_md5_unknown_app() {
    let err = server(app1_secrets(), AuthEngineVersion::V1, true)
        .step(
            &SaslMessage {
                app_id: "app-7",
                token: b"",
            }
            .encode(),
            &mut seeded(1),
        )
        .unwrap_err();
    assert_eq!(
        err,
        Error::UnknownApp {
            app: "app-7".into()
        }
    );
}

#[test]
fn digest_md5_app_id_is_the_first_messages() {
    let mut auth = sasl_server_with_nonce("secret", JDK_NONCE);
    let ok = client_token(&digest::base64(b"secret", false), JDK_NONCE, "auth", "");
    let second = SaslMessage {
        app_id: "someone-else",
        token: ok.as_bytes(),
    }
    .encode();
    let Ok(AuthStep::Done { app_id, .. }) = auth.step(&second, &mut seeded(1)) else {
        panic!()
    };
    assert_eq!(app_id, "app-1");
}

#[test]
fn base64_matches_netty_line_breaking() {
    assert_eq!(digest::base64(b"sparkSaslUser", true), SASL_USER);
    assert_eq!(digest::base64(b"", true), "");
    assert_eq!(digest::base64(b"a", true), "YQ==");
    assert_eq!(digest::base64(b"ab", true), "YWI=");
    // Spark's encodePassword of this 64-char secret (recorded from the JDK run).
    assert_eq!(
        digest::base64(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            true
        ),
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4\nOWFiY2RlZg=="
    );
    // Exactly 57 bytes = 76 characters: no trailing newline.
    assert!(!digest::base64(&[0u8; 57], true).contains('\n'));
    assert_eq!(digest::base64(&[0u8; 58], true).matches('\n').count(), 1);
}

// === The SASL client ===

const JDK_CHALLENGE: &str = "realm=\"default\",nonce=\"FEHUry1T0lW/jSJ6SYZKA3zsFRq7F1CXkaR2JSay\",qop=\"auth-conf,auth\",charset=utf-8,cipher=\"3des,rc4,des,rc4-56,rc4-40\",algorithm=md5-sess";

#[test]
fn sasl_client_reproduces_the_jdk_client() {
    // With the JDK client's cnonce, our client answers the JDK server's challenge with the
    // exact bytes the JDK client sent, and accepts the JDK server's rspauth.
    let (mut client, first) = SaslClient::start("app-1", &Secret::from("secret"));
    assert_eq!(first, sasl(b""));
    let cnonce = BASE64_STANDARD
        .decode("R4esg6JDzpKSBG+MtS8r5/gMeKmKgp5KDXk+2s/O")
        .unwrap();
    let next = client
        .respond(JDK_CHALLENGE.as_bytes(), &mut scripted(vec![cnonce]))
        .unwrap();
    assert_eq!(
        String::from_utf8(SaslMessage::decode(&next).unwrap().token.to_vec()).unwrap(),
        JDK_RESPONSE
    );
    client.finish(JDK_RSPAUTH.as_bytes()).unwrap();
}

#[test]
fn sasl_client_against_our_server() {
    for secret in ["secret", JDK_LONG_SECRET] {
        let secret = Secret::from(secret);
        let mut auth = server(
            StaticSecrets::shared(secret.clone()),
            AuthEngineVersion::V1,
            true,
        );
        let (mut client, first) = SaslClient::start("app-5", &secret);
        let AuthStep::Continue(challenge) = auth.step(&first, &mut seeded(1)).unwrap() else {
            panic!()
        };
        let response = client.respond(&challenge, &mut seeded(2)).unwrap();
        let AuthStep::Done { reply, app_id, .. } = auth.step(&response, &mut seeded(3)).unwrap()
        else {
            panic!()
        };
        assert_eq!(app_id, "app-5");
        client.finish(&reply).unwrap();
    }
    // A server with another secret: refused; a forged rspauth: refused by the client.
    let mut auth = server(
        StaticSecrets::shared(Secret::from("a")),
        AuthEngineVersion::V1,
        true,
    );
    let (mut client, first) = SaslClient::start("app-5", &Secret::from("b"));
    let AuthStep::Continue(challenge) = auth.step(&first, &mut seeded(1)).unwrap() else {
        panic!()
    };
    let response = client.respond(&challenge, &mut seeded(2)).unwrap();
    assert!(auth.step(&response, &mut seeded(3)).is_err());
    assert!(
        client
            .finish(b"rspauth=00000000000000000000000000000000")
            .is_err()
    );
    // Challenges the client cannot answer.
    for bad in [
        "realm=\"default\",qop=\"auth\",algorithm=md5-sess",
        "nonce=\"x\",qop=\"auth-conf\",algorithm=md5-sess",
        "nonce=\"x\",qop=\"auth\"",
        "nonce=\"x",
    ] {
        let (mut client, _) = SaslClient::start("app-5", &Secret::from("b"));
        assert!(
            client.respond(bad.as_bytes(), &mut seeded(2)).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn secret_from_a_secret_file_is_plain_base64() {
    assert_eq!(Secret::from_secret_file(&[0xFF, 0, 1]).as_bytes(), b"/wAB");
    // No line breaks, unlike the SASL password.
    assert!(
        !Secret::from_secret_file(&[7u8; 100])
            .as_bytes()
            .contains(&b'\n')
    );
}

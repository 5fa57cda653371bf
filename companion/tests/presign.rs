//! `fallback-companion presign`, the real binary, against published signing vectors: AWS's
//! presigned-URL example and the GET cases of Google's V4 conformance suite. The vectors'
//! values and their sources are in `tests/fixtures/`.

use std::process::{Command, Output};

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The binary with only the given environment (no credentials of the machine running the test:
/// HOME points at an empty directory, so no ~/.aws files are read either).
fn presign(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fallback-companion"));
    command
        .arg("presign")
        .args(args)
        .env_clear()
        .env("HOME", home.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "presign failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn reproduces_awss_presigned_url_example() {
    let v = fixture("aws-sigv4-presigned-get.json");
    let text = |k: &str| v[k].as_str().unwrap().to_owned();
    let out = presign(
        &[
            "s3://examplebucket/test.txt",
            "--expires-in",
            &v["expires_in"].to_string(),
            "--at",
            &text("timestamp"),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &text("access_key_id")),
            ("AWS_SECRET_ACCESS_KEY", &text("secret_access_key")),
            ("AWS_REGION", &text("region")),
        ],
    );
    let printed = stdout(&out);
    let url = url::Url::parse(printed.trim()).unwrap();
    assert_eq!(
        format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap(),
            url.path()
        ),
        text("url"),
        "virtual-hosted style on AWS's global endpoint: {printed}"
    );
    let query: std::collections::BTreeMap<String, String> =
        url.query_pairs().into_owned().collect();
    assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(query["X-Amz-Credential"], text("expected_credential"));
    assert_eq!(query["X-Amz-Date"], "20130524T000000Z");
    assert_eq!(query["X-Amz-Expires"], "86400");
    assert_eq!(query["X-Amz-SignedHeaders"], "host");
    assert_eq!(query["X-Amz-Signature"], text("expected_signature"));
    assert!(!printed.contains(&text("secret_access_key")));
}

#[test]
fn reproduces_googles_v4_simple_get_conformance_case() {
    let v = fixture("gcs-v4-simple-get.json");
    let out = presign(
        &[
            &format!(
                "gcs://{}/{}",
                v["bucket"].as_str().unwrap(),
                v["object"].as_str().unwrap()
            ),
            "--expires-in",
            v["expiration"].as_str().unwrap(),
            "--at",
            v["timestamp"].as_str().unwrap(),
        ],
        &[("GCP_SERVICE_ACCOUNT", &v["service_account"].to_string())],
    );
    assert_eq!(stdout(&out).trim(), v["expectedUrl"].as_str().unwrap());
}

/// Every applicable case of Google's V4 conformance suite, "Forward Slashes should not be
/// stripped" (the object `/path/with/...`, named as `gcs://test-bucket//path/with/...`)
/// included: object names are signed byte for byte.
#[test]
fn reproduces_every_get_case_of_googles_v4_conformance_suite() {
    let account = fixture("gcs-v4-simple-get.json")["service_account"].to_string();
    let cases = fixture("gcs-v4-get-vectors.json");
    let cases = cases["vectors"].as_array().unwrap();
    assert!(cases.len() >= 5, "{cases:?}");
    for case in cases {
        let text = |k: &str| case[k].as_str().unwrap().to_owned();
        let mut env = vec![("GCP_SERVICE_ACCOUNT", account.clone())];
        if let Some(emulator) = case["emulatorHostname"].as_str() {
            env.push(("STORAGE_EMULATOR_HOST", emulator.to_owned()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = presign(
            &[
                &format!("gcs://{}/{}", text("bucket"), text("object")),
                "--expires-in",
                &case["expiration"].to_string(),
                "--at",
                &text("timestamp"),
            ],
            &env,
        );
        assert_eq!(
            stdout(&out).trim(),
            text("expectedUrl"),
            "{}",
            text("description")
        );
    }
}

#[test]
fn the_same_vector_signs_from_a_key_file() {
    let v = fixture("gcs-v4-simple-get.json");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.json");
    std::fs::write(&key_file, v["service_account"].to_string()).unwrap();
    let out = presign(
        &[
            "gcs://test-bucket/test-object",
            "--expires-in",
            "10",
            "--at",
            "2019-02-01T09:00:00Z",
        ],
        &[("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap())],
    );
    assert_eq!(stdout(&out).trim(), v["expectedUrl"].as_str().unwrap());
}

#[test]
fn file_urls_need_the_signers_key_and_errors_show_no_secret() {
    let out = presign(
        &[
            "file:///srv/fallback/3.4/config.json",
            "--at",
            "2019-02-01T09:00:00Z",
        ],
        &[
            (
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                "file:///srv/fallback",
            ),
            ("FALLBACK_PUBLIC_URL", "http://companion:8280"),
            ("FALLBACK_URL_SIGNING_KEY", "hmac-s3cret"),
        ],
    );
    let url = stdout(&out);
    assert!(
        url.starts_with(
            "http://companion:8280/v1/objects/3.4/config.json?expires=1549015200&signature="
        ),
        "{url}"
    );
    assert!(!url.contains("hmac-s3cret"));

    let bad = presign(
        &["gcs://b/k"],
        &[(
            "GCP_SERVICE_ACCOUNT",
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nTUlJRXNlY3JldA==\n-----END PRIVATE KEY-----"}"#,
        )],
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("GCP_SERVICE_ACCOUNT"), "{stderr}");
    assert!(!stderr.contains("TUlJRXNlY3JldA"), "{stderr}");
}

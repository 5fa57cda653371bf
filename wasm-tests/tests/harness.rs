//! Self-tests of the harness: SeaweedFS, the S3 client, the mock CP.

use std::time::{Duration, Instant};

use bytes::Bytes;
use wasm_tests::http::{request, request_with_timeout};
use wasm_tests::{etag_of, MockCp, Mode, SeaweedFs};

#[test]
fn tool_paths() {
    let weed = wasm_tests::binary("weed");
    assert!(weed.is_file(), "{}", weed.display());
    assert!(wasm_tests::workspace_root().join("Cargo.toml").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn seaweed_bucket_identities_and_filer() {
    let fs = SeaweedFs::start().await;
    let bucket = fs.bucket().to_string();
    assert_eq!(bucket, "fallback");
    assert!(fs.endpoint().starts_with("http://127.0.0.1:"));

    // Bucket exists via S3 for both identities.
    let head = fs
        .writer_client()
        .head_bucket(&bucket)
        .await
        .expect("HEAD bucket");
    assert_eq!(head.status, 200);
    let list = fs
        .reader_client()
        .list_keys(&bucket, "")
        .await
        .expect("reader list");
    assert!(list.is_empty(), "{list:?}");

    // Unsigned requests are refused.
    let unsigned = request("PUT", &format!("{}/{bucket}/x", fs.endpoint()), &[], "x")
        .await
        .expect("unsigned PUT");
    assert_eq!(unsigned.status, 403, "{}", unsigned.text());

    // Writer PUT with metadata, reader GET.
    let key = "kong/3.4.1.0/config.json";
    let put = fs
        .writer_client()
        .put_object(
            &bucket,
            key,
            r#"{"_format_version":"3.0"}"#,
            &[
                ("content-type", "application/json"),
                ("x-amz-meta-sha256", "abc123"),
            ],
        )
        .await
        .expect("writer PUT");
    assert_eq!(put.status, 200, "{}", put.text());
    let got = fs
        .reader_client()
        .get_object(&bucket, key)
        .await
        .expect("reader GET");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, br#"{"_format_version":"3.0"}"#);
    assert_eq!(got.header("x-amz-meta-sha256"), Some("abc123"));

    // Reader may not write; a wrong secret is refused.
    let denied = fs
        .reader_client()
        .put_object(&bucket, "kong/x", "nope", &[])
        .await
        .expect("reader PUT");
    assert_eq!(denied.status, 403, "{}", denied.text());
    let mut bad = fs.writer().clone();
    bad.secret_key.push('x');
    let bad = wasm_tests::S3Client::new(&fs.endpoint(), bad)
        .get_object(&bucket, key)
        .await
        .expect("bad-secret GET");
    assert_eq!(bad.status, 403);

    // Filer access behind S3's back.
    assert_eq!(
        fs.raw_object(key).await.as_deref(),
        Some(&br#"{"_format_version":"3.0"}"#[..])
    );
    assert_eq!(fs.raw_object("kong/absent").await, None);
    let meta = fs.raw_metadata(key).await.expect("metadata");
    assert!(
        meta.contains(&("x-amz-meta-sha256".to_string(), "abc123".to_string())),
        "{meta:?}"
    );
    assert_eq!(fs.list_keys("kong/").await, vec![key.to_string()]);

    // Tampering keeps the metadata, changes the body.
    fs.corrupt_object(key, "tampered").await;
    let got = fs
        .reader_client()
        .get_object(&bucket, key)
        .await
        .expect("GET tampered");
    assert_eq!(got.body, b"tampered");
    assert_eq!(got.header("x-amz-meta-sha256"), Some("abc123"));
    assert_eq!(got.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn seaweed_stop_restart_keeps_data() {
    let mut fs = SeaweedFs::start().await;
    let bucket = fs.bucket().to_string();
    let put = fs
        .writer_client()
        .put_object(
            &bucket,
            "p/v/config.json",
            "persisted",
            &[("x-amz-meta-revision", "7")],
        )
        .await
        .expect("PUT");
    assert_eq!(put.status, 200, "{}", put.text());
    let endpoint = fs.endpoint();

    fs.stop().await;
    assert!(!fs.is_running());
    let down =
        request_with_timeout("GET", &endpoint, &[], Bytes::new(), Duration::from_secs(2)).await;
    assert!(down.is_err(), "S3 still answers after stop: {down:?}");

    let t = Instant::now();
    fs.restart().await;
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(fs.endpoint(), endpoint);
    let got = fs
        .reader_client()
        .get_object(&bucket, "p/v/config.json")
        .await
        .expect("GET after restart");
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, b"persisted");
    assert_eq!(got.header("x-amz-meta-revision"), Some("7"));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_seaweeds_in_parallel() {
    let t = Instant::now();
    let (a, b, c) = tokio::join!(SeaweedFs::start(), SeaweedFs::start(), SeaweedFs::start());
    eprintln!("3 instances ready in {:?}", t.elapsed());
    for (i, fs) in [&a, &b, &c].into_iter().enumerate() {
        let body = format!("instance {i}");
        let put = fs
            .writer_client()
            .put_object(fs.bucket(), "k", body.clone(), &[])
            .await
            .expect("PUT");
        assert_eq!(put.status, 200, "{}", put.text());
    }
    for (i, fs) in [&a, &b, &c].into_iter().enumerate() {
        assert_eq!(
            fs.raw_object("k").await,
            Some(format!("instance {i}").into_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mock_cp_etag_modes_stop_restart_admin_shape() {
    let mut cp = MockCp::start().await;
    let url = format!("{}/config", cp.url());

    // No document yet.
    let r = request("GET", &url, &[], Bytes::new()).await.expect("GET");
    assert_eq!(r.status, 503);

    let doc = serde_json::json!({"_format_version": "3.0", "services": []});
    cp.set_document(&doc);
    let r = request("GET", &url, &[], Bytes::new()).await.expect("GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), doc);
    let etag = r.header("etag").expect("etag").to_string();
    assert_eq!(etag, etag_of(&r.body));
    assert_eq!(etag.len(), 18);
    assert_eq!(cp.current_etag().as_deref(), Some(etag.as_str()));

    let r = request("GET", &url, &[("if-none-match", &etag)], Bytes::new())
        .await
        .expect("conditional GET");
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = request("GET", &url, &[("if-none-match", "\"other\"")], Bytes::new())
        .await
        .expect("conditional GET");
    assert_eq!(r.status, 200);

    // Admin API shape.
    cp.set_admin_api_shape(true);
    let r = request("GET", &url, &[("if-none-match", &etag)], Bytes::new())
        .await
        .expect("GET admin shape");
    assert_eq!(r.status, 200);
    let inner = r.json()["config"]
        .as_str()
        .expect("config is a string")
        .to_string();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&inner).expect("inner JSON"),
        doc
    );
    cp.set_admin_api_shape(false);

    // Raw body.
    cp.set_raw_body("not json", Some("v1"));
    let r = request("GET", &url, &[], Bytes::new())
        .await
        .expect("GET raw");
    assert_eq!(
        (r.status, r.body.as_slice(), r.header("etag")),
        (200, &b"not json"[..], Some("\"v1\""))
    );

    // Failure modes.
    cp.set_mode(Mode::Fail500);
    let r = request("GET", &url, &[], Bytes::new())
        .await
        .expect("GET 500");
    assert_eq!(r.status, 500);
    cp.set_mode(Mode::Slow(Duration::from_millis(500)));
    let t = Instant::now();
    let r = request("GET", &url, &[], Bytes::new())
        .await
        .expect("GET slow");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(500));
    cp.set_mode(Mode::Normal);

    // Recorded requests.
    let reqs = cp.requests();
    assert_eq!(reqs.len(), 8);
    assert!(reqs
        .iter()
        .all(|r| r.path == "/config" && r.method == "GET"));
    assert_eq!(reqs[2].if_none_match.as_deref(), Some(etag.as_str()));
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 200, 304, 200, 200, 200, 500, 200]
    );

    // Stop: refused; restart: same port, serving again.
    cp.stop().await;
    let r = request_with_timeout("GET", &url, &[], Bytes::new(), Duration::from_secs(2)).await;
    assert!(r.is_err(), "still answering after stop: {r:?}");
    cp.restart().await;
    let r = request("GET", &format!("{}/other?x=1", cp.url()), &[], Bytes::new())
        .await
        .expect("GET after restart");
    assert_eq!(r.status, 200);
    let last = cp.requests().pop().expect("recorded");
    assert_eq!(
        (last.path.as_str(), last.query.as_deref()),
        ("/other", Some("x=1"))
    );
}

//! AWS's default credential chain end to end: the real `fallback-companion` binary, given no
//! `AWS_ACCESS_KEY_ID`, finds its keys through `aws-config` — a shared credentials file with
//! `AWS_PROFILE`, ECS container credentials, IMDSv2, web identity (STS
//! `AssumeRoleWithWebIdentity`) — and writes to a real SeaweedFS with them.
//!
//! Every run starts from `env_clear()` with `HOME` in a temp dir, so the developer's `~/.aws` is
//! never read, and `AWS_EC2_METADATA_DISABLED=true` unless the case is IMDS itself, so no case
//! waits on 169.254.169.254.
//!
//! The limit these tests live with: SeaweedFS's static identities (`s3.json`) refuse a request
//! that carries a non-empty `x-amz-security-token`, even with the writer's valid keys (4.48:
//! `HEAD` 403 without a body, `PUT` 403 `InvalidAccessKeyId`). Real temporary credentials always
//! carry one; `aws-config` insists on the field for ECS,
//! IMDS and STS answers, so the mocks here hand out `"Token": ""`, which `aws-config` accepts and
//! which the companion treats as no token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fallback_core::digest::{canonical_json, Sha256Digest};
use fallback_core::export::object_key;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasm_tests::fixtures::{document, wait_until};
use wasm_tests::{companion_binary, MockCp, SeaweedFs};

const WAIT: Duration = Duration::from_secs(30);

fn key() -> String {
    object_key("kong", "3.4.1.0").unwrap()
}

/// One request a mock received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A mock's answer: status, headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A tiny HTTP server on loopback answering with `handler`, recording every request.
struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, handler) = (seen.clone(), handler.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (seen, handler) = (seen.clone(), handler.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.map(|b| b.to_bytes());
                                let request = Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(n, v)| {
                                            (
                                                n.as_str().to_owned(),
                                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                            )
                                        })
                                        .collect(),
                                    body: String::from_utf8_lossy(&body.unwrap_or_default())
                                        .into_owned(),
                                };
                                let (status, headers, answer) = handler(&request);
                                seen.lock().unwrap().push(request);
                                let mut response = Response::builder().status(status);
                                for (name, value) in headers {
                                    response = response.header(name, value);
                                }
                                Ok::<_, Infallible>(
                                    response.body(Full::new(Bytes::from(answer))).unwrap(),
                                )
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Mock { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// ECS / IMDS JSON credentials with the writer's keys, expiring `valid_for` from now.
fn json_credentials(seaweed: &SeaweedFs, token: &str, valid_for: Duration) -> String {
    let expiration = humantime::format_rfc3339_seconds(SystemTime::now() + valid_for);
    serde_json::json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": seaweed.writer().access_key,
        "SecretAccessKey": seaweed.writer().secret_key,
        "Token": token,
        "Expiration": expiration.to_string(),
    })
    .to_string()
}

/// A temp dir standing in for `HOME`, with the config document to export.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("kong.json"),
            serde_json::to_vec_pretty(&document("chain")).unwrap(),
        )
        .unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The environment every run gets: storage, region, version, node id, `HOME`. No keys.
    fn base_env(&self, seaweed: &SeaweedFs) -> Vec<(&'static str, String)> {
        vec![
            (
                "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE",
                format!("s3://{}/kong", seaweed.bucket()),
            ),
            ("AWS_CONFIG_STORAGE_ENDPOINT", seaweed.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("FALLBACK_CONFIG_VERSION", "3.4.1.0".into()),
            ("FALLBACK_NODE_ID", "chain".into()),
            ("HOME", self.dir.path().display().to_string()),
            // Never fall through to a real (or absent) AWS endpoint.
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path("no-credentials").display().to_string(),
            ),
            (
                "AWS_CONFIG_FILE",
                self.path("no-config").display().to_string(),
            ),
        ]
    }

    /// `fallback-companion export --config-file kong.json --attempts 1` with `base_env` plus
    /// `extra` (later entries win).
    fn export(&self, seaweed: &SeaweedFs, extra: &[(&str, String)]) -> Output {
        let mut command = Command::new(companion_binary());
        command
            .args(["export", "--attempts", "1", "--config-file"])
            .arg(self.path("kong.json"))
            .env_clear();
        for (k, v) in self.base_env(seaweed) {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output().expect("run fallback-companion export")
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The sha256 metadata of the stored object, read through the filer (not through our code).
async fn stored_sha(seaweed: &SeaweedFs) -> Option<String> {
    let meta = seaweed.raw_metadata(&key()).await?;
    meta.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-meta-sha256"))
        .map(|(_, v)| v.clone())
}

fn sha_of(value: &serde_json::Value) -> String {
    Sha256Digest::of(&canonical_json(value)).to_hex()
}

async fn assert_exported(seaweed: &SeaweedFs, out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    assert_eq!(
        stored_sha(seaweed).await,
        Some(sha_of(&document("chain"))),
        "the object is stored: {}",
        text(out)
    );
}

/// No instance metadata service: every case but IMDS's own.
fn no_imds() -> (&'static str, String) {
    ("AWS_EC2_METADATA_DISABLED", "true".into())
}

fn ok(body: String) -> Reply {
    (200, Vec::new(), body)
}

/// 1. `AWS_PROFILE` selects a named profile of the shared credentials file; the `default`
///    profile (read-only keys) is not used. A profile that does not exist is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_credentials_file_with_a_named_profile() {
    let seaweed = SeaweedFs::start().await;
    let case = Case::new();
    let credentials = case.path("credentials");
    let config = case.path("config");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n\n\
             [fallback-writer]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            seaweed.reader().access_key,
            seaweed.reader().secret_key,
            seaweed.writer().access_key,
            seaweed.writer().secret_key,
        ),
    )
    .unwrap();
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\n\n[profile fallback-writer]\nregion = us-east-1\n",
    )
    .unwrap();
    let files = [
        no_imds(),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.display().to_string(),
        ),
        ("AWS_CONFIG_FILE", config.display().to_string()),
    ];

    // Without AWS_PROFILE the chain takes `default`: the reader's keys, refused for writing.
    let out = case.export(&seaweed, &files);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&seaweed.reader().access_key),
        "the default profile's key is the one refused: {}",
        text(&out)
    );
    assert_eq!(stored_sha(&seaweed).await, None);

    let mut env = files.to_vec();
    env.push(("AWS_PROFILE", "no-such-profile".into()));
    let out = case.export(&seaweed, &env);
    let said = text(&out);
    eprintln!("wrong profile: {said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("no-such-profile") && said.contains("no AWS credentials"),
        "the error names the missing profile: {said}"
    );
    assert!(!said.contains(&seaweed.writer().secret_key), "{said}");

    env.pop();
    env.push(("AWS_PROFILE", "fallback-writer".into()));
    let out = case.export(&seaweed, &env);
    assert_exported(&seaweed, &out).await;
    assert!(
        !text(&out).contains(&seaweed.writer().secret_key),
        "{}",
        text(&out)
    );
}

/// 2. ECS container credentials from `AWS_CONTAINER_CREDENTIALS_FULL_URI` on loopback, with the
///    `AWS_CONTAINER_AUTHORIZATION_TOKEN` the agent requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_container_credentials() {
    let seaweed = SeaweedFs::start().await;
    let case = Case::new();
    let body = json_credentials(&seaweed, "", Duration::from_secs(3600));
    let ecs = Mock::start(move |req| match req.header("authorization") {
        Some("ecs-agent-secret") => ok(body.clone()),
        _ => (401, Vec::new(), "{\"Code\":\"Unauthorized\"}".into()),
    })
    .await;
    let env = [
        no_imds(),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/creds", ecs.url()),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "ecs-agent-secret".into(),
        ),
    ];
    let out = case.export(&seaweed, &env);
    assert_exported(&seaweed, &out).await;
    let seen = ecs.seen();
    assert_eq!(ecs.count("GET", "/creds"), 1, "{seen:?}");
    assert_eq!(seen[0].header("authorization"), Some("ecs-agent-secret"));

    // Real ECS credentials carry a session token, which this store refuses: the error says so.
    let body = json_credentials(&seaweed, "ECS-SESSION-TOKEN", Duration::from_secs(3600));
    let ecs = Mock::start(move |_| ok(body.clone())).await;
    let out = case.export(
        &seaweed,
        &[
            no_imds(),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/creds", ecs.url()),
            ),
        ],
    );
    assert_token_refused(&out, &seaweed);
    assert_eq!(ecs.count("GET", "/creds"), 1);
}

/// The store refusing the session token of otherwise valid keys: exit 1, and the error says
/// the request carried one and that the store accepts only its own static keys.
fn assert_token_refused(out: &Output, seaweed: &SeaweedFs) {
    let said = text(out);
    eprintln!("token refused: {said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&seaweed.writer().access_key)
            && said.contains("HTTP 403")
            && said.contains("carried the session token")
            && said.contains("found by the AWS default chain")
            && said.contains("only static identities"),
        "{said}"
    );
    assert!(
        !said.contains(&seaweed.writer().secret_key) && !said.contains("SESSION-TOKEN"),
        "{said}"
    );
}

/// 3. IMDSv2 at `AWS_EC2_METADATA_SERVICE_ENDPOINT`: a token from `PUT /latest/api/token`
///    (with its TTL header), then the role name and its credentials, both with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_v2_instance_credentials() {
    let seaweed = SeaweedFs::start().await;
    let case = Case::new();
    const TOKEN: &str = "imds-session-7f3a";
    const ROLE: &str = "fallback-exporter";
    let body = json_credentials(&seaweed, "", Duration::from_secs(3600));
    let imds = Mock::start(move |req| {
        let unauthorized = || (401, Vec::new(), String::new());
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token") => {
                match req.header("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(ttl) if ttl.parse::<u32>().is_ok() => (
                        200,
                        vec![("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_owned())],
                        TOKEN.to_owned(),
                    ),
                    _ => (400, Vec::new(), String::new()),
                }
            }
            _ if req.header("x-aws-ec2-metadata-token") != Some(TOKEN) => unauthorized(),
            ("GET", "/latest/meta-data/iam/security-credentials/") => ok(ROLE.to_owned()),
            ("GET", p) if p == format!("/latest/meta-data/iam/security-credentials/{ROLE}") => {
                ok(body.clone())
            }
            _ => (404, Vec::new(), String::new()),
        }
    })
    .await;

    // The mock enforces the token: a plain IMDSv1 GET is refused.
    let v1 = wasm_tests::http::get(&format!(
        "{}/latest/meta-data/iam/security-credentials/",
        imds.url()
    ))
    .await
    .unwrap();
    assert_eq!(v1.status, 401);
    let probes = imds.seen().len();

    let out = case.export(
        &seaweed,
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url())],
    );
    assert_exported(&seaweed, &out).await;
    let seen = imds.seen().split_off(probes);
    assert_eq!(
        seen.first().map(|r| (r.method.as_str(), r.path.as_str())),
        Some(("PUT", "/latest/api/token")),
        "IMDSv2: the token first: {seen:?}"
    );
    assert!(imds.count("PUT", "/latest/api/token") >= 1, "{seen:?}");
    assert_eq!(
        imds.count(
            "GET",
            &format!("/latest/meta-data/iam/security-credentials/{ROLE}")
        ),
        1,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.header("x-aws-ec2-metadata-token") == Some(TOKEN)),
        "every metadata read carried the token: {seen:?}"
    );
}

/// The STS answer to `AssumeRoleWithWebIdentity` with the writer's keys.
fn sts_answer(seaweed: &SeaweedFs, session_token: &str) -> String {
    let expiration =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
    format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:kong:fallback</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/fallback-exporter/fallback-test</Arn>
      <AssumedRoleId>AROAEXAMPLE:fallback-test</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{session_token}</SessionToken>
      <Expiration>{expiration}</Expiration>
    </Credentials>
    <Provider>oidc.eks.us-east-1.amazonaws.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        seaweed.writer().access_key,
        seaweed.writer().secret_key,
    )
}

/// 4. Web identity (EKS IRSA): the token file's content goes to STS `AssumeRoleWithWebIdentity`
///    at `AWS_ENDPOINT_URL_STS`, with `AWS_ROLE_ARN` and `AWS_ROLE_SESSION_NAME`.
///
/// Real STS always returns a session token, which SeaweedFS's static identities refuse: the
/// answer with a token shows the failure is exactly the store refusing it (STS was asked and
/// answered), and an answer with an empty `<SessionToken>` shows the rest of the path works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_token_through_sts() {
    let seaweed = SeaweedFs::start().await;
    let case = Case::new();
    const JWT: &str =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl";
    let token_file = case.path("web-identity-token");
    std::fs::write(&token_file, JWT).unwrap();
    let env = |sts: &Mock| {
        vec![
            no_imds(),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/fallback-exporter".into(),
            ),
            ("AWS_ROLE_SESSION_NAME", "fallback-test".into()),
            ("AWS_ENDPOINT_URL_STS", sts.url()),
        ]
    };
    let sts_mock = |answer: String| {
        Mock::start(move |req| {
            if req.method == "POST" && req.body.contains("Action=AssumeRoleWithWebIdentity") {
                (
                    200,
                    vec![("content-type", "text/xml".into())],
                    answer.clone(),
                )
            } else {
                (400, Vec::new(), String::new())
            }
        })
    };
    let check_request = |sts: &Mock| {
        let seen = sts.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let form: Vec<(String, String)> = url_form(&seen[0].body);
        let field = |name: &str| {
            form.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{name} missing from {form:?}"))
        };
        assert_eq!(field("WebIdentityToken"), JWT, "the token file's content");
        assert_eq!(
            field("RoleArn"),
            "arn:aws:iam::123456789012:role/fallback-exporter"
        );
        assert_eq!(field("RoleSessionName"), "fallback-test");
        assert!(
            seen[0].header("authorization").is_none(),
            "AssumeRoleWithWebIdentity is not signed: {seen:?}"
        );
    };

    let sts = sts_mock(sts_answer(&seaweed, "WEB-IDENTITY-SESSION-TOKEN")).await;
    let out = case.export(&seaweed, &env(&sts));
    check_request(&sts);
    assert_token_refused(&out, &seaweed);
    assert_eq!(stored_sha(&seaweed).await, None);

    let sts = sts_mock(sts_answer(&seaweed, "")).await;
    let out = case.export(&seaweed, &env(&sts));
    check_request(&sts);
    assert_exported(&seaweed, &out).await;
}

/// `application/x-www-form-urlencoded` pairs.
fn url_form(body: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(n), decode(v))
        })
        .collect()
}

/// 5. Credentials expiring 5 min + a few seconds ahead are fetched again once inside the
///    5-minute margin, and `run` keeps exporting with the fresh ones; within the window one
///    fetch serves every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_credentials_are_refreshed_before_they_expire() {
    const FRESH_FOR: Duration = Duration::from_secs(6);
    let seaweed = SeaweedFs::start().await;
    let case = Case::new();
    let (access_key, secret_key) = (
        seaweed.writer().access_key.clone(),
        seaweed.writer().secret_key.clone(),
    );
    let ecs = Mock::start(move |_| {
        let expiration = humantime::format_rfc3339_seconds(
            SystemTime::now() + Duration::from_secs(5 * 60) + FRESH_FOR,
        );
        ok(serde_json::json!({
            "AccessKeyId": access_key,
            "SecretAccessKey": secret_key,
            "Token": "",
            "Expiration": expiration.to_string(),
        })
        .to_string())
    })
    .await;
    let cp = MockCp::start().await;
    cp.set_document(&document("r1"));

    let mut env = case.base_env(&seaweed);
    env.extend([
        no_imds(),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("{}/creds", ecs.url()),
        ),
        ("KONG_CLUSTER_FALLBACK_CONFIG_EXPORT", "on".into()),
        ("FALLBACK_CONTROL_PLANE_URL", format!("{}/config", cp.url())),
        ("FALLBACK_POLL_INTERVAL", "200ms".into()),
        ("KONG_CLUSTER_FALLBACK_EXPORT_DELAY", "200ms".into()),
        ("FALLBACK_RETRY_INITIAL", "200ms".into()),
        ("FALLBACK_RETRY_MAX", "1s".into()),
    ]);
    // The export role alone opens no port (`CompanionProcess` waits for the signer's /healthz).
    let log_path = case.path("companion.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(companion_binary());
    command
        .arg("run")
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let companion = Running(command.spawn().expect("start fallback-companion run"));
    let companion_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    wait_until("r1 is stored", WAIT, || async {
        stored_sha(&seaweed).await == Some(sha_of(&document("r1")))
    })
    .await;
    assert_eq!(
        ecs.count("GET", "/creds"),
        1,
        "one fetch serves the HEAD and the PUT: {}",
        companion_log()
    );

    for (round, marker) in ["r2", "r3"].into_iter().enumerate() {
        // Past the point where the last credentials came within 5 minutes of expiring.
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(500)).await;
        cp.set_document(&document(marker));
        wait_until(&format!("{marker} is stored"), WAIT, || async {
            stored_sha(&seaweed).await == Some(sha_of(&document(marker)))
        })
        .await;
        let fetched = ecs.count("GET", "/creds");
        assert_eq!(
            fetched,
            round + 2,
            "fresh credentials fetched for {marker}: {}",
            companion_log()
        );
    }
    drop(companion);
    let log = companion_log();
    assert!(!log.contains(&seaweed.writer().secret_key), "{log}");
    assert!(!log.contains("ERROR"), "no export failed: {log}");
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! `schemas/gatewayd.openapi.yaml` against the code: the same routes, and real responses
//! from a real gatewayd (socket, database, vault) that fit the described shapes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use agentfs::client::{fs_route, ClientError, GatewayClient};
use agentfs::wire::ErrorCode;
use gatewayd::config::{Config, Paths};
use hyper::Method;
use serde_json::Value;

fn schema_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/gatewayd.openapi.yaml")
}

fn schema() -> Value {
    serde_yaml_ng::from_slice(&std::fs::read(schema_path()).unwrap()).unwrap()
}

fn resolve<'a>(schema: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = schema;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            cur
        }
        None => v,
    }
}

/// A small structural check: types, required members, no undescribed members, enums.
fn check(schema: &Value, shape: &Value, v: &Value, at: &str) {
    let shape = resolve(schema, shape);
    match shape.get("type").and_then(Value::as_str) {
        Some("object") => {
            let obj = v.as_object().unwrap_or_else(|| panic!("{at}: expected an object, got {v}"));
            let props = shape["properties"].as_object().unwrap();
            for r in shape["required"].as_array().into_iter().flatten() {
                assert!(obj.contains_key(r.as_str().unwrap()), "{at}: missing required `{r}` in {v}");
            }
            for (k, child) in obj {
                let p = props.get(k).unwrap_or_else(|| panic!("{at}: `{k}` is not in the schema"));
                check(schema, p, child, &format!("{at}.{k}"));
            }
        }
        Some("array") => {
            for (i, item) in v.as_array().unwrap_or_else(|| panic!("{at}: expected an array")).iter().enumerate() {
                check(schema, &shape["items"], item, &format!("{at}[{i}]"));
            }
        }
        Some("string") => {
            let s = v.as_str().unwrap_or_else(|| panic!("{at}: expected a string, got {v}"));
            if let Some(values) = shape.get("enum").and_then(Value::as_array) {
                assert!(values.iter().any(|e| e == s), "{at}: `{s}` is not in the schema's enum");
            }
        }
        Some("integer") => assert!(v.is_i64() || v.is_u64(), "{at}: expected an integer, got {v}"),
        Some("boolean") => assert!(v.is_boolean(), "{at}: expected a boolean, got {v}"),
        other => panic!("{at}: the checker does not know type {other:?}"),
    }
}

fn response_shape<'a>(schema: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let op = &schema["paths"][path][method.to_ascii_lowercase()];
    let resp = resolve(schema, &op["responses"][status.to_string()]);
    assert!(!resp.is_null(), "{method} {path}: status {status} is not described");
    &resp["content"]["application/json"]["schema"]
}

#[test]
fn routes_match_the_schema() {
    let spec = agentfs::spec::parse_openapi(&std::fs::read(schema_path()).unwrap()).unwrap();
    let described: BTreeSet<(String, String)> =
        spec.operations.iter().map(|o| (o.method.as_str().to_owned(), o.path.clone())).collect();
    let served: BTreeSet<(String, String)> = gatewayd::api::ROUTES
        .iter()
        .chain(gatewayd::api::AGENT_ROUTES)
        .chain(gatewayd::api::PEER_ROUTES)
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(described, served);

    let schema = schema();
    let mut marked = BTreeSet::new();
    for (path, item) in schema["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("x-nkmc-tcp").and_then(Value::as_bool) == Some(true) {
                marked.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    let agent: BTreeSet<(String, String)> =
        gatewayd::api::AGENT_ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(marked, agent, "the operations marked x-nkmc-tcp are the agent routes");
    assert!(agent.is_subset(&served));

    let codes: Vec<String> = schema["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let ours: Vec<String> =
        ErrorCode::ALL.iter().map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_owned()).collect();
    assert_eq!(codes, ours);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_fit_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths {
        data_dir: dir.path().join("data"),
        socket: dir.path().join("run/gatewayd.sock"),
        config_file: dir.path().join("none.toml"),
        mount: dir.path().join("mnt"),
    };
    let gw = gatewayd::Gateway::open(paths.clone(), Config::default()).unwrap();
    let listener = gatewayd::api::socket::bind(&paths.socket).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let server = tokio::spawn(gatewayd::api::serve(gw, gatewayd::api::socket::OwnerOnly::new(listener), Some(tcp)));
    let client = GatewayClient::new(&paths.socket, Duration::from_secs(10));
    let schema = schema();
    let json = |s: &str| Some((bytes::Bytes::from(s.to_owned()), "application/json"));

    let ok = |method: &str, path: &str, status: u16, body: &[u8]| {
        let v: Value = serde_json::from_slice(body).unwrap();
        check(&schema, response_shape(&schema, method, path, status), &v, &format!("{method} {path}"));
    };
    let petstore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/openapi/petstore.yaml"))
            .unwrap();
    let req = serde_json::json!({"document": petstore, "base_url": "http://127.0.0.1:9/v1", "domain": "pets.test"});
    let (st, body) = client.call(Method::POST, "/v1/services", json(&req.to_string())).await.unwrap();
    ok("POST", "/v1/services", st.as_u16(), &body);
    let (st, body) = client.call(Method::POST, "/v1/services", json(r#"{"document":"openapi: 9"}"#)).await.unwrap();
    ok("POST", "/v1/services", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/services", None).await.unwrap();
    ok("GET", "/v1/services", st.as_u16(), &body);
    let (st, body) = client.call(Method::PUT, "/v1/keys/pets.test", json(r#"{"secret":"s3cret"}"#)).await.unwrap();
    ok("PUT", "/v1/keys/{domain}", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/keys", None).await.unwrap();
    ok("GET", "/v1/keys", st.as_u16(), &body);
    let oauth2 = r#"{"secret":"id:sec","placement":{"kind":"o_auth2_client_credentials","token_url":""}}"#;
    let (st, body) = client.call(Method::PUT, "/v1/keys/oauth.test", json(oauth2)).await.unwrap();
    assert_eq!(st.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    ok("PUT", "/v1/keys/{domain}", st.as_u16(), &body);
    let (st, _) = client.call(Method::DELETE, "/v1/keys/oauth.test", None).await.unwrap();
    assert_eq!(st.as_u16(), 204);
    let (st, body) = client.call(Method::POST, "/v1/tokens", json(r#"{"agent":"alice"}"#)).await.unwrap();
    assert_eq!(st.as_u16(), 200);
    let token = serde_json::from_slice::<Value>(&body).unwrap()["token"].as_str().unwrap().to_owned();
    let alice = GatewayClient::new(&paths.socket, Duration::from_secs(10)).with_token(Some(token));
    let (st, body) = alice.call(Method::PUT, "/v1/keys/pets.test", json(r#"{"secret":"own"}"#)).await.unwrap();
    ok("PUT", "/v1/keys/{domain}", st.as_u16(), &body);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["agent"], "alice");
    let (st, body) = client.call(Method::GET, "/v1/keys", None).await.unwrap();
    ok("GET", "/v1/keys", st.as_u16(), &body);
    let (st, body) = client.call(Method::POST, "/v1/vault/rotate", None).await.unwrap();
    assert_eq!(st.as_u16(), 200, "{}", String::from_utf8_lossy(&body));
    ok("POST", "/v1/vault/rotate", st.as_u16(), &body);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["keys"], 2);
    let (st, body) = client.call(Method::GET, "/v1/vault/check", None).await.unwrap();
    ok("GET", "/v1/vault/check", st.as_u16(), &body);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["keys"], 2);
    let (st, body) = alice.call(Method::POST, "/v1/vault/rotate", None).await.unwrap();
    ok("POST", "/v1/vault/rotate", st.as_u16(), &body);
    assert_eq!(st.as_u16(), 403);
    let (st, body) = client.call(Method::GET, "/v1/wallet", None).await.unwrap();
    assert_eq!(st.as_u16(), 404);
    ok("GET", "/v1/wallet", st.as_u16(), &body);
    let (st, body) = client.call(Method::POST, "/v1/wallet", json(r#"{"create":true}"#)).await.unwrap();
    ok("POST", "/v1/wallet", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/wallet", None).await.unwrap();
    ok("GET", "/v1/wallet", st.as_u16(), &body);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["address"].as_str().unwrap().starts_with("0x"));
    let (st, body) = client.call(Method::GET, "/v1/budget", None).await.unwrap();
    ok("GET", "/v1/budget", st.as_u16(), &body);
    let (st, body) = client.call(Method::PUT, "/v1/budget", json(r#"{"daily":"1.5"}"#)).await.unwrap();
    ok("PUT", "/v1/budget", st.as_u16(), &body);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["daily"], "1.5");
    let (st, body) = client.call(Method::PUT, "/v1/budget", json(r#"{"daily":"-1"}"#)).await.unwrap();
    ok("PUT", "/v1/budget", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/ledger", None).await.unwrap();
    ok("GET", "/v1/ledger", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, &fs_route("stat", "/pets.test/pets"), None).await.unwrap();
    ok("GET", "/v1/fs/stat", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, &fs_route("list", "/pets.test"), None).await.unwrap();
    ok("GET", "/v1/fs/list", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, &fs_route("list", "/nope.test"), None).await.unwrap();
    ok("GET", "/v1/fs/list", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, &fs_route("read", "/pets.test/pets"), None).await.unwrap();
    assert_eq!(st.as_u16(), 502, "nothing listens on port 9");
    ok("GET", "/v1/fs/read", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/status", None).await.unwrap();
    ok("GET", "/v1/status", st.as_u16(), &body);
    for probe in ["/healthz", "/readyz"] {
        let (st, body) = client.call(Method::GET, probe, None).await.unwrap();
        ok("GET", probe, st.as_u16(), &body);
    }
    // Over TCP: the probes answer without a token, the rest is 401 with an ErrorBody.
    let tcp_get = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: gatewayd\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    };
    let (st, body) = tcp_get("/readyz").await;
    ok("GET", "/readyz", st, body.as_bytes());
    let (st, body) = tcp_get("/v1/fs/list?path=/").await;
    assert_eq!(st, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    check(&schema, &schema["components"]["schemas"]["ErrorBody"], &v, "401 over TCP");
    let (st, body) = client.call(Method::GET, "/v1/proxy/tools", None).await.unwrap();
    ok("GET", "/v1/proxy/tools", st.as_u16(), &body);
    let exec = gatewayd::run::frame::encode(gatewayd::run::frame::Kind::Request, br#"{"tool":"nope"}"#);
    let media = gatewayd::run::frame::MEDIA_TYPE;
    let (st, body) = client.call(Method::POST, "/v1/proxy/exec", Some((exec, media))).await.unwrap();
    assert_eq!(st.as_u16(), 404);
    ok("POST", "/v1/proxy/exec", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/audit?limit=50", None).await.unwrap();
    ok("GET", "/v1/audit", st.as_u16(), &body);
    let records: agentfs::wire::AuditRecords = serde_json::from_slice(&body).unwrap();
    let ops: Vec<&str> = records.records.iter().map(|r| r.operation.as_str()).collect();
    assert!(ops.contains(&"register") && ops.contains(&"keys.set") && ops.contains(&"read"), "{ops:?}");
    assert!(!String::from_utf8_lossy(&body).contains("s3cret"), "no secret in the audit log");
    let (st, body) = client.call(Method::GET, "/v1/audit?after=2&limit=1", None).await.unwrap();
    ok("GET", "/v1/audit", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/audit?limit=x", None).await.unwrap();
    assert_eq!(st.as_u16(), 400);
    ok("GET", "/v1/audit", st.as_u16(), &body);
    let (st, body) = client.call(Method::GET, "/v1/audit/verify", None).await.unwrap();
    ok("GET", "/v1/audit/verify", st.as_u16(), &body);
    let verdict: agentfs::wire::AuditVerification = serde_json::from_slice(&body).unwrap();
    assert!(verdict.ok, "{verdict:?}");
    // A damaged log: the verdict with its problem fits the schema too.
    rusqlite::Connection::open(paths.database())
        .unwrap()
        .execute("UPDATE audit SET outcome = 'ok' WHERE seq = 2", [])
        .unwrap();
    let (st, body) = client.call(Method::GET, "/v1/audit/verify", None).await.unwrap();
    ok("GET", "/v1/audit/verify", st.as_u16(), &body);
    let verdict: agentfs::wire::AuditVerification = serde_json::from_slice(&body).unwrap();
    assert_eq!(verdict.problem.map(|p| (p.seq, p.kind)), Some((2, agentfs::wire::AuditProblemKind::Edited)));

    // Agent tokens: the public key (plain text), mint, inspect, revoke.
    let (st, body) = client.call(Method::GET, "/.well-known/nkmc/biscuit-public-key", None).await.unwrap();
    assert_eq!(st.as_u16(), 200);
    let key = String::from_utf8(body.to_vec()).unwrap();
    assert!(key.len() == 72 && key.starts_with("ed25519/"), "{key}");
    assert!(key[8..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{key}");
    let (st, body) = client.call(Method::POST, "/v1/tokens", json(r#"{"agent":"a1"}"#)).await.unwrap();
    ok("POST", "/v1/tokens", st.as_u16(), &body);
    let token = serde_json::from_slice::<agentfs::wire::TokenResponse>(&body).unwrap().token;
    let (st, body) = client.call(Method::POST, "/v1/tokens", json(r#"{"agent":"no spaces"}"#)).await.unwrap();
    assert_eq!(st.as_u16(), 400);
    ok("POST", "/v1/tokens", st.as_u16(), &body);
    let narrow = gatewayd::auth::token::attenuate(
        &token,
        &["pets.test:read/pets".parse().unwrap()],
        Some(Duration::from_secs(3600)),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let req = serde_json::json!({ "token": narrow });
    let (st, body) = client.call(Method::POST, "/v1/tokens/inspect", json(&req.to_string())).await.unwrap();
    ok("POST", "/v1/tokens/inspect", st.as_u16(), &body);
    let info: agentfs::wire::TokenInfo = serde_json::from_slice(&body).unwrap();
    assert!(info.verified && info.revoked == Some(false) && info.expires_at.is_some(), "{info:?}");
    let (st, body) = client.call(Method::POST, "/v1/tokens/inspect", json(r#"{"token":"garbage"}"#)).await.unwrap();
    assert_eq!(st.as_u16(), 400);
    ok("POST", "/v1/tokens/inspect", st.as_u16(), &body);
    let (st, body) = client.call(Method::POST, "/v1/tokens/revoke", json(&req.to_string())).await.unwrap();
    ok("POST", "/v1/tokens/revoke", st.as_u16(), &body);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["revoked"], 1);
    let lineage = serde_json::json!({ "token": narrow, "lineage": true });
    let (st, body) = client.call(Method::POST, "/v1/tokens/revoke", json(&lineage.to_string())).await.unwrap();
    ok("POST", "/v1/tokens/revoke", st.as_u16(), &body);
    let (st, body) = client.call(Method::POST, "/v1/tokens/inspect", json(&req.to_string())).await.unwrap();
    ok("POST", "/v1/tokens/inspect", st.as_u16(), &body);
    assert!(String::from_utf8_lossy(&body).contains(r#""revoked":true"#));
    let foreign =
        gatewayd::auth::token::mint(&gatewayd::auth::RootKey::generate(), "x", std::time::SystemTime::now()).unwrap();
    let req = serde_json::json!({ "token": foreign });
    let (st, body) = client.call(Method::POST, "/v1/tokens/revoke", json(&req.to_string())).await.unwrap();
    assert_eq!(st.as_u16(), 400);
    ok("POST", "/v1/tokens/revoke", st.as_u16(), &body);
    assert!(!String::from_utf8_lossy(&body).contains(&foreign[..40]), "no token in errors");

    // Strict requests: an unknown member is refused with an ErrorBody.
    let err = client
        .send_json::<_, Value>(Method::PUT, "/v1/keys/pets.test", &serde_json::json!({"secret": "x", "extra": 1}))
        .await;
    assert!(matches!(err, Err(ClientError::Api { status: 400, .. })), "{err:?}");

    // Every route in the tables is served on the socket (none falls through to "no such route").
    for (method, path) in gatewayd::api::ROUTES.iter().chain(gatewayd::api::AGENT_ROUTES) {
        if *path == "/v1/shutdown" {
            continue;
        }
        let path = path.replace("{domain}", "pets.test");
        let path = if path.starts_with("/v1/fs/") { format!("{path}?path=/pets.test") } else { path };
        let (_, body) = client.call(method.parse().unwrap(), &path, json("{}")).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("no such route") && !text.contains("method not allowed"), "{method} {path}: {text}");
    }

    let (st, _) = client.call(Method::POST, "/v1/shutdown", None).await.unwrap();
    assert_eq!(st.as_u16(), 202);
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

//! Registration end to end: documents found from a URL, then used through the mount.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use nkmc_e2e::{fixture, fuse_available, json, Nkmc, Upstream};

/// The Petstore fixture with a relative server URL, as a server would publish it.
fn petstore_with_relative_server() -> String {
    std::fs::read_to_string(fixture("openapi/petstore.yaml"))
        .unwrap()
        .replace("url: http://petstore.swagger.io/v1", "url: /v1")
}

#[test]
fn register_by_url_discovers_the_document() {
    if !fuse_available() {
        return;
    }
    let doc = petstore_with_relative_server();
    assert!(doc.contains("url: /v1"), "the fixture's server line changed");
    let up = Upstream::start(move |req| match req.uri.as_str() {
        // The API root is an HTML page that points at its description.
        "/" => (200, vec![("content-type".into(), "text/html".into())], b"<html>Petstore</html>".to_vec()),
        "/openapi.yaml" => (200, vec![("content-type".into(), "text/plain".into())], doc.as_bytes().to_vec()),
        "/v1/pets" => json(200, r#"[{"id":1,"name":"rex"},{"id":2,"name":"tom"}]"#),
        "/v1/pets/1" => json(200, r#"{"id":1,"name":"rex"}"#),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.up();
    let out = n.ok(&["register", "--url", &up.url("/")]);
    let domain = up.addr.to_string();
    assert!(out.contains(&format!("{domain} → http://{domain}/v1")), "relative server resolved: {out}");

    let svc = n.mount.join(&domain);
    let mut items: Vec<String> =
        std::fs::read_dir(svc.join("pets.d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    items.sort();
    assert_eq!(items, vec!["1", "2"], "ids from the collection's response");
    assert_eq!(std::fs::read(svc.join("pets.d/1")).unwrap(), br#"{"id":1,"name":"rex"}"#);
    assert!(up.seen().iter().any(|s| s.uri == "/openapi.yaml"));
}

#[test]
fn register_by_url_follows_link_headers_and_explains_failure() {
    let doc = petstore_with_relative_server();
    let up = Upstream::start(move |req| match req.uri.as_str() {
        "/api/" => {
            (200, vec![("link".into(), r#"</descriptions/pets.yaml>; rel="service-desc""#.into())], b"welcome".to_vec())
        }
        "/descriptions/pets.yaml" => (200, vec![], doc.as_bytes().to_vec()),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let out = n.ok(&["register", "--url", &up.url("/api/"), "--domain", "pets.test"]);
    assert!(out.contains("pets.test"), "{out}");
    let listed = n.ok(&["ls", "/pets.test"]);
    assert!(listed.contains("pets\n") && listed.contains("pets.d/"), "{listed}");

    let nothing = Upstream::start(|_| json(404, "{}"));
    let out = n.run(&["register", "--url", &nothing.url("/x/")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no OpenAPI or OpenRPC document found"), "{err}");
    assert!(err.contains(&nothing.url("/x/openapi.json")) && err.contains(&nothing.url("/swagger.json")), "{err}");
    assert!(err.contains("rpc.discover"), "{err}");
    let services = n.ok(&["services", "list"]);
    assert!(!services.contains(&nothing.addr.to_string()), "the registry is untouched: {services}");
}

/// A JSON-RPC server playing the OpenRPC Petstore; it describes itself with rpc.discover.
fn json_rpc_petstore() -> Upstream {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("openrpc/petstore-openrpc.json")).unwrap()).unwrap();
    Upstream::start(move |req| {
        if req.method != "POST" {
            return json(405, "{}");
        }
        let call: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(call["jsonrpc"], "2.0");
        let id = call["id"].clone();
        let answer = |result: serde_json::Value| {
            json(200, &serde_json::json!({"jsonrpc":"2.0","id":id,"result":result}).to_string())
        };
        match call["method"].as_str().unwrap() {
            "rpc.discover" => answer(doc.clone()),
            "list_pets" => answer(serde_json::json!([{"id": 1, "name": "rex"}])),
            "create_pet" => answer(serde_json::json!({"id": 2, "name": call["params"]["newPetName"]})),
            "get_pet" if call["params"] == serde_json::json!([7]) => {
                answer(serde_json::json!({"id": 7, "name": "tom"}))
            }
            _ => json(
                200,
                &serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"invalid params"}})
                    .to_string(),
            ),
        }
    })
}

#[test]
fn openrpc_methods_are_files() {
    if !fuse_available() {
        return;
    }
    let up = json_rpc_petstore();
    let n = Nkmc::new("");
    n.up();
    let spec = fixture("openrpc/petstore-openrpc.json");
    n.ok(&["register", "--spec", spec.to_str().unwrap(), "--domain", "rpc.test", "--base-url", &up.url("/rpc")]);
    let svc = n.mount.join("rpc.test");
    let mut files: Vec<String> =
        std::fs::read_dir(&svc).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, vec!["create_pet", "get_pet", "list_pets", "skill.md"]);

    // A method with no required params is read directly.
    assert_eq!(std::fs::read(svc.join("list_pets")).unwrap(), br#"[{"id":1,"name":"rex"}]"#);
    let calls = up.seen();
    let call: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(
        (calls[0].uri.as_str(), &call["method"], &call["params"]),
        ("/rpc", &"list_pets".into(), &serde_json::json!([]))
    );

    // Writing params calls the method; reading the file then returns the result.
    std::fs::write(svc.join("create_pet"), br#"{"newPetName":"fido"}"#).unwrap();
    assert_eq!(std::fs::read(svc.join("create_pet")).unwrap(), br#"{"id":2,"name":"fido"}"#);
    std::fs::write(svc.join("get_pet"), b"[7]").unwrap();
    assert_eq!(std::fs::read(svc.join("get_pet")).unwrap(), br#"{"id":7,"name":"tom"}"#);

    // A JSON-RPC error comes back as an errno (-32602 → EINVAL), params must be JSON.
    let mut f = std::fs::OpenOptions::new().write(true).open(svc.join("get_pet")).unwrap();
    std::io::Write::write_all(&mut f, b"[8]").unwrap();
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EINVAL));
    let out = n.run(&["write", "/rpc.test/get_pet", "\"7\""]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be an object or an array"));
    let out = n.run(&["write", "/rpc.test/get_pet", "[8]"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("code -32602: invalid params"));
}

#[test]
fn register_by_url_uses_rpc_discover() {
    let up = json_rpc_petstore();
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let out = n.ok(&["register", "--url", &up.url("/rpc"), "--domain", "pets.rpc"]);
    assert!(out.contains(&format!("pets.rpc → {}", up.url("/rpc"))), "called where it answered: {out}");
    assert_eq!(n.ok(&["cat", "/pets.rpc/list_pets"]), r#"[{"id":1,"name":"rex"}]"#);
}

#[test]
fn register_a_skill_manifest() {
    let up = Upstream::start(|req| match req.uri.as_str() {
        "/api/forecast/paris" => json(200, r#"{"city":"paris","sky":"clear"}"#),
        _ => json(404, "{}"),
    });
    let n = Nkmc::new("");
    n.ok(&["gateway", "start", "--daemon"]);
    let skill = n.dir.path().join("skill.md");
    std::fs::write(
        &skill,
        "---\nname: weather\ngateway: nkmc\nversion: \"1.0\"\nroles: [agent]\n---\n\n# Weather\n\nForecasts.\n\n\
         ## API\n\n### Forecast for a city\n\n`GET /forecast/{city}`\n\nPrice: 0.001 USD\n",
    )
    .unwrap();
    let out = n.ok(&[
        "register",
        "--skill",
        skill.to_str().unwrap(),
        "--domain",
        "weather.test",
        "--base-url",
        &up.url("/api"),
    ]);
    assert!(out.contains("weather.test") && out.contains("1 operations"), "{out}");
    assert_eq!(n.ok(&["cat", "/weather.test/forecast/paris"]), r#"{"city":"paris","sky":"clear"}"#);
    let generated = n.ok(&["cat", "/weather.test/skill.md"]);
    assert!(generated.contains("### Forecast for a city\n\n`GET /forecast/{city}`"), "{generated}");

    let bad = n.dir.path().join("bad.md");
    std::fs::write(&bad, "# no front matter\n").unwrap();
    let out =
        n.run(&["register", "--skill", bad.to_str().unwrap(), "--domain", "bad.test", "--base-url", &up.url("/")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("front matter"));
}

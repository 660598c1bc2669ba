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

//! Paid lending with x402, through real gatewayd processes: B lends a domain for 0.01 USDC
//! per request, A pays from its wallet within a daily budget, and a facilitator played by
//! this test's own HTTP server on 127.0.0.1 checks every payment's EIP-712 signature,
//! amount, payee and single use, as a real one would before submitting it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine;
use gatewayd::payments::evm::{self, Address, TokenDomain, Transfer};
use gatewayd::payments::x402::{FacilitatorRequest, PaymentRequired};
use nkmc_e2e::{canary, contains, json, unix_now, Nkmc, PeerRequest, Seen, Upstream};

const SECRET_AB: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00123456789abcdef0123456789abcdef";
const PETS: &str = r#"[{"id":1,"name":"rex"},{"id":2,"name":"tom"}]"#;
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

use nkmc_e2e::{eventually, federated_gateway as gateway};

/// What a facilitator checks before it would submit the transfer: the signature is the
/// payer's over exactly these terms, the terms are the lender's requirements, it is valid
/// now, and its nonce was never settled.
fn check(req: &FacilitatorRequest, settled: &HashSet<String>) -> Result<String, String> {
    let (p, r) = (&req.payment_payload, &req.payment_requirements);
    let a = &p.payload.authorization;
    let extra = r.extra.clone().ok_or("no token domain")?;
    let domain = TokenDomain {
        name: extra.name,
        version: extra.version,
        chain_id: evm::chain_id(&r.network).ok_or("unknown network")?,
        contract: Address::parse(&r.asset).map_err(|e| e.to_string())?,
    };
    let nonce: [u8; 32] = hex::decode(&a.nonce[2..]).map_err(|_| "nonce")?.try_into().map_err(|_| "nonce length")?;
    let transfer = Transfer {
        from: Address::parse(&a.from).map_err(|e| e.to_string())?,
        to: Address::parse(&a.to).map_err(|e| e.to_string())?,
        value: a.value.parse().map_err(|_| "value")?,
        valid_after: a.valid_after.parse().map_err(|_| "validAfter")?,
        valid_before: a.valid_before.parse().map_err(|_| "validBefore")?,
        nonce,
    };
    if evm::signer(&transfer.digest(&domain), &p.payload.signature) != Some(transfer.from) {
        return Err("invalid_exact_evm_payload_signature".into());
    }
    if a.value != r.max_amount_required || Address::parse(&r.pay_to).ok() != Some(transfer.to) {
        return Err("invalid_exact_evm_payload_authorization_value".into());
    }
    let now = unix_now();
    if transfer.valid_after > now || transfer.valid_before <= now {
        return Err("invalid_exact_evm_payload_authorization_valid_before".into());
    }
    if settled.contains(&a.nonce) {
        return Err("invalid_exact_evm_payload_authorization_nonce_used".into());
    }
    Ok(transfer.from.to_string())
}

struct Facilitator {
    server: Upstream,
    settled: Arc<Mutex<HashSet<String>>>,
}

impl Facilitator {
    fn start() -> Self {
        let settled: Arc<Mutex<HashSet<String>>> = Arc::default();
        let s = settled.clone();
        let server = Upstream::start(move |req: &Seen| {
            let Ok(body) = serde_json::from_slice::<FacilitatorRequest>(&req.body) else {
                return json(400, r#"{"error":"not a facilitator request"}"#);
            };
            let mut settled = s.lock().unwrap();
            let verdict = check(&body, &settled);
            match (req.uri.as_str(), verdict) {
                ("/verify", Ok(payer)) => json(200, &format!(r#"{{"isValid":true,"payer":"{payer}"}}"#)),
                ("/verify", Err(why)) => json(200, &format!(r#"{{"isValid":false,"invalidReason":"{why}"}}"#)),
                ("/settle", Ok(payer)) => {
                    let nonce = body.payment_payload.payload.authorization.nonce.clone();
                    let tx = format!("0x{}", hex::encode(evm::keccak(nonce.as_bytes())));
                    settled.insert(nonce);
                    json(
                        200,
                        &format!(
                            r#"{{"success":true,"transaction":"{tx}","network":"base-sepolia","payer":"{payer}"}}"#
                        ),
                    )
                }
                ("/settle", Err(why)) => json(200, &format!(r#"{{"success":false,"errorReason":"{why}"}}"#)),
                _ => json(404, "{}"),
            }
        });
        Facilitator { server, settled }
    }

    fn calls(&self, route: &str) -> Vec<FacilitatorRequest> {
        let seen = self.server.seen();
        seen.iter().filter(|s| s.uri == route).map(|s| serde_json::from_slice(&s.body).unwrap()).collect()
    }
}

/// A (no payments configured) and B (paid through `fac`, `[payments]` plus `b_extra`), peers;
/// B lends pets.test from `up` with `key` to A under `rule` (what follows `rules set
/// pets.test --allow --peers gw-a`). Returns once A sees the domain.
fn paid_pair(up: &Upstream, key: &str, fac: &Facilitator, b_extra: &str, rule: &[&str]) -> (Nkmc, Nkmc) {
    let b_config = format!(
        "[payments]\nfacilitator_url = \"{}\"\npay_to = \"{PAY_TO}\"\n{b_extra}",
        fac.server.url("").trim_end_matches('/')
    );
    let (a, b) = (gateway("gw-a", ""), gateway("gw-b", &b_config));
    b.hold_pets(&up.url("/v1"), key);
    let mut args = vec!["rules", "set", "pets.test", "--allow", "--peers", "gw-a"];
    args.extend_from_slice(rule);
    b.ok(&args);
    for (n, id, other) in [(&a, "gw-b", &b), (&b, "gw-a", &a)] {
        let url = format!("http://{}", other.tcp_addr());
        n.ok(&["peers", "add", "--id", id, "--name", id, "--url", &url, "--secret", SECRET_AB]);
    }
    eventually("A sees pets.test", || a.run(&["ls", "/"]).stdout.windows(10).any(|w| w == b"pets.test/"));
    (a, b)
}

fn ledger(n: &Nkmc) -> Vec<serde_json::Value> {
    n.ok(&["ledger", "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_pays_b_per_request_within_its_budget_and_both_ledgers_agree() {
    let key = canary();
    let up = Upstream::keyed(&key, move |req| match req.uri.as_str() {
        "/v1/pets" => json(200, PETS),
        _ => json(404, r#"{"error":"no such pet"}"#),
    });
    let fac = Facilitator::start();
    // Four calls a minute: the unpaid 402 probe before each paid call does not count.
    let (a, b) = paid_pair(&up, &key, &fac, "", &["--pricing", "per-request", "--amount", "0.01", "--rate", "4/min"]);
    // A paid rule needs [payments] on the lender.
    let no_payee = a.run(&["rules", "set", "x.test", "--allow", "--pricing", "per-request", "--amount", "0.01"]);
    assert!(String::from_utf8_lossy(&no_payee.stderr).contains("facilitator_url and pay_to"));
    let skill = a.ok(&["cat", "/pets.test/skill.md"]);
    assert!(skill.contains("`gw-b` (gw-b): per-request 0.01"), "{skill}");

    // Unpaid, B answers 402 with its x402 requirements, and nothing reaches the upstream.
    let b_addr = b.tcp_addr();
    // A read of /pets.test/pets, signed by A; with a payment, bound to it (its digest in the
    // signed body) unless `bind` is false.
    let exec = |nonce: &str, payment: Option<&str>, bind: bool| {
        let body = match payment {
            Some(p) if bind => format!(
                r#"{{"op":"read","path":"/pets.test/pets","payment_sha256":"{}"}}"#,
                gatewayd::payments::lender::payment_digest(p)
            ),
            _ => r#"{"op":"read","path":"/pets.test/pets"}"#.to_owned(),
        };
        let extra: Vec<(&str, &str)> = payment.map(|p| ("X-PAYMENT", p)).into_iter().collect();
        PeerRequest {
            path: "/federation/exec",
            body: body.as_bytes(),
            signed_body: body.as_bytes(),
            timestamp: unix_now(),
            nonce,
            sender: "gw-a",
            recipient: "gw-b",
            secret: SECRET_AB.as_bytes(),
        }
        .send_with(b_addr, &extra)
    };
    let unpaid = exec("00000000000000000000000000000d01", None, false);
    assert_eq!(unpaid.status, 402, "{}", unpaid.text());
    let required: PaymentRequired = serde_json::from_slice(&unpaid.body).unwrap();
    let req = &required.accepts[0];
    assert_eq!((req.scheme.as_str(), req.network.as_str()), ("exact", "base-sepolia"));
    assert_eq!((req.max_amount_required.as_str(), req.pay_to.as_str()), ("10000", PAY_TO));
    assert_eq!(req.resource, "nkmc://gw-b/read/pets.test/pets");
    let garbage = exec("00000000000000000000000000000d02", Some("bm90IGEgcGF5bWVudA=="), true);
    assert_eq!(garbage.status, 402, "{}", garbage.text());
    assert!(garbage.text().contains("not an x402 payment"), "{}", garbage.text());

    // A has no wallet yet: the read fails with what to do, and costs nothing.
    let no_wallet = a.run(&["cat", "/pets.test/pets"]);
    assert!(!no_wallet.status.success());
    assert!(String::from_utf8_lossy(&no_wallet.stderr).contains("nkmc wallet create"));
    // A wallet but no budget: nothing is paid either.
    let wallet_key = "5c".repeat(32);
    let imported = a.run_stdin(&["wallet", "import"], wallet_key.as_bytes());
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let address = a.ok(&["wallet", "show"]);
    let no_budget = a.run(&["cat", "/pets.test/pets"]);
    assert!(String::from_utf8_lossy(&no_budget.stderr).contains("nkmc budget set --daily"));
    assert!(up.seen().is_empty() && fac.server.seen().is_empty(), "nothing was paid or called");

    // With a budget of two calls: two reads are paid and served, the third is refused.
    a.ok(&["budget", "set", "--daily", "0.02"]);
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    assert_eq!(a.ok(&["cat", "/pets.test/pets"]), PETS);
    let over = a.run(&["cat", "/pets.test/pets"]);
    assert!(!over.status.success());
    let why = String::from_utf8_lossy(&over.stderr);
    assert!(why.contains("budget is 0.02") && why.contains("0.02 is spent"), "{why}");
    assert_eq!(up.seen().len(), 2, "the unpaid call never reached the upstream");
    assert!(a.ok(&["budget", "show"]).contains("spent today 0.02 USDC"));

    // One ledger entry per charge on each side, the same payments.
    let settled =
        |n: &Nkmc| -> Vec<serde_json::Value> { ledger(n).into_iter().filter(|e| e["state"] == "settled").collect() };
    let (spent, earned) = (settled(&a), settled(&b));
    assert_eq!((spent.len(), earned.len()), (2, 2), "{spent:?}\n{earned:?}");
    for (s, e) in spent.iter().zip(&earned) {
        assert_eq!((s["direction"].as_str(), e["direction"].as_str()), (Some("spent"), Some("earned")));
        for field in ["nonce", "transaction", "amount", "pay_to", "path", "payer"] {
            assert_eq!(s[field], e[field], "{field}");
        }
        assert_eq!((s["amount"].as_str(), s["amount_display"].as_str()), (Some("10000"), Some("0.01")));
        assert!(address.contains(s["payer"].as_str().unwrap()), "{address}");
    }
    assert_eq!((fac.calls("/verify").len(), fac.calls("/settle").len()), (2, 2));
    assert!(a.ok(&["ledger"]).contains("spent\tsettled\tgw-b\tread\t/pets.test/pets 0.01"));
    // A's audit names the lender of each paid read.
    assert!(a.ok(&["audit", "tail", "-n", "50"]).contains("peer gw-b"));

    // A payment already taken is refused when presented again, before any upstream call;
    // one not bound to the signed request (its digest in the body) is refused too.
    let used = fac.calls("/settle")[0].payment_payload.to_header();
    let unbound = exec("00000000000000000000000000000d03", Some(&used), false);
    assert_eq!(unbound.status, 402, "{}", unbound.text());
    assert!(unbound.text().contains("not bound to this request"), "{}", unbound.text());
    let replay = exec("00000000000000000000000000000d04", Some(&used), true);
    assert_eq!(replay.status, 402, "{}", replay.text());
    assert!(replay.text().contains("already used"), "{}", replay.text());
    assert_eq!(up.seen().len(), 2);

    // A read the upstream fails is not settled: the payment is void on both sides.
    a.ok(&["budget", "set", "--daily", "0.03"]);
    assert!(!a.run(&["cat", "/pets.test/pets.d/9"]).status.success());
    assert_eq!(fac.calls("/settle").len(), 2, "a failed call is never settled");
    assert_eq!((settled(&a).len(), settled(&b).len()), (2, 2));
    let void = |n: &Nkmc| ledger(n).iter().filter(|e| e["state"] == "void").count();
    assert_eq!((void(&a), void(&b)), (1, 1));
    assert_eq!(fac.settled.lock().unwrap().len(), 2);
    assert!(a.ok(&["budget", "show"]).contains("spent today 0.02 USDC"), "a void payment is not counted");

    // Two reads at once with room for one: exactly one is paid and served.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let cmd = a.cmd(&["cat", "/pets.test/pets"]);
            std::thread::spawn(move || {
                let mut cmd = cmd;
                cmd.output().unwrap().status.success()
            })
        })
        .collect();
    let served = racers.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count();
    assert_eq!(served, 1, "the budget allowed one more read");
    assert_eq!(settled(&a).len(), 3);
    assert!(a.ok(&["budget", "show"]).contains("spent today 0.03 USDC"));

    // The wallet key stays in A's vault: not in any file in clear, nor in what B or the
    // facilitator saw, nor in the audit.
    let key_forms = [wallet_key.clone(), format!("0x{wallet_key}")];
    for f in a.data_files().into_iter().chain(b.data_files()) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        for k in &key_forms {
            assert!(!contains(&bytes, k.as_bytes()), "the wallet key is in {}", f.display());
        }
    }
    for s in fac.server.seen() {
        assert!(!contains(&s.body, wallet_key.as_bytes()));
    }
    let header_json = base64::engine::general_purpose::STANDARD.decode(&used).unwrap();
    assert!(!contains(&header_json, wallet_key.as_bytes()));
}

#[test]
fn a_paid_write_is_settled_before_it_is_carried_out_and_charged_once() {
    let key = canary();
    let fac = Facilitator::start();
    // The upstream notes, for each write, whether it was already settled when it arrived.
    let settled = fac.settled.clone();
    let paid_first: Arc<Mutex<Vec<bool>>> = Arc::default();
    let seen = paid_first.clone();
    let up = Upstream::keyed(&key, move |_| {
        seen.lock().unwrap().push(!settled.lock().unwrap().is_empty());
        json(500, r#"{"error":"the pet store is down"}"#)
    });
    let rule = ["--ops", "read,write", "--pricing", "per-request", "--amount", "0.05"];
    let (a, b) = paid_pair(&up, &key, &fac, "", &rule);
    assert!(a.run_stdin(&["wallet", "import"], "7a".repeat(32).as_bytes()).status.success());
    a.ok(&["budget", "set", "--daily", "1"]);

    let w = a.run(&["write", "/pets.test/pets", r#"{"name":"rex"}"#]);
    assert!(!w.status.success(), "the upstream failed the write");
    assert_eq!(*paid_first.lock().unwrap(), vec![true], "one write, arriving already paid");
    let charged = |n: &Nkmc| ledger(n).into_iter().filter(|e| e["state"] == "settled").count();
    assert_eq!((charged(&a), charged(&b)), (1, 1), "a paid write is charged once, whatever its outcome");
    assert!(a.ok(&["budget", "show"]).contains("spent today 0.05 USDC"));
}

#[test]
fn per_token_lending_is_prepaid_and_metered_on_the_tokens_the_upstream_reports() {
    let key = canary();
    let up = Upstream::keyed(&key, move |_| {
        json(200, r#"{"data":[{"id":1}],"usage":{"prompt_tokens":100,"completion_tokens":500,"total_tokens":600}}"#)
    });
    let fac = Facilitator::start();
    let rule = ["--pricing", "per-token", "--amount", "0.002"];
    let (a, b) = paid_pair(&up, &key, &fac, "prepaid_tokens = 1000\n", &rule);
    let skill = a.ok(&["cat", "/pets.test/skill.md"]);
    assert!(skill.contains("per-token 0.002 per 1000 tokens, paid in advance for 1000 tokens"), "{skill}");
    assert!(a.run_stdin(&["wallet", "import"], "3c".repeat(32).as_bytes()).status.success());
    a.ok(&["budget", "set", "--daily", "0.004"]);

    // 1000 tokens cost 0.002; each answer reports 600. First read: a top-up, 400 left.
    // Second: on credit (-200 left). Third: another top-up (800 left). Fourth: on credit.
    let charges = |n: &Nkmc| ledger(n).into_iter().filter(|e| e["state"] == "settled").count();
    for (i, paid_so_far) in [1, 1, 2, 2].into_iter().enumerate() {
        let out = a.run(&["cat", "/pets.test/pets"]);
        assert!(out.status.success(), "read {i}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!((charges(&a), charges(&b)), (paid_so_far, paid_so_far), "after read {i}");
    }
    assert_eq!(up.seen().len(), 4);
    assert!(ledger(&b).iter().all(|e| e["amount_display"] == "0.002"));
    // -400 tokens left: the next read needs a top-up the budget does not allow.
    let over = a.run(&["cat", "/pets.test/pets"]);
    assert!(!over.status.success());
    assert!(String::from_utf8_lossy(&over.stderr).contains("budget is 0.004"));
    assert_eq!(up.seen().len(), 4, "no read without credit");
    assert_eq!(fac.calls("/settle").len(), 2);
}

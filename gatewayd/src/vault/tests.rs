use super::*;

use zeroize::Zeroizing;

fn setup() -> (tempfile::TempDir, Connection, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::db::open(&dir.path().join("db")).unwrap();
    let v = Vault::open_file(&dir.path().join("master.key"), Cipher::Aes256Gcm, &conn).unwrap();
    (dir, conn, v)
}

fn secret(s: &str) -> Secret {
    Secret::new(s.into())
}

#[test]
fn swapped_ciphertexts_do_not_decrypt() {
    let (_dir, conn, v) = setup();
    v.set_pool_key(&conn, "a.example", &secret("CANARY_a"), None).unwrap();
    let basic = SecurityScheme::Basic;
    v.set_pool_key(&conn, "b.example", &secret("CANARY_b"), Some(&basic)).unwrap();
    assert_eq!(v.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "CANARY_a");
    assert_eq!(v.pool_key(&conn, "b.example").unwrap().unwrap().placement, Some(SecurityScheme::Basic));
    conn.execute_batch(
        "UPDATE keys SET ciphertext = (SELECT ciphertext FROM keys WHERE domain = 'b.example') WHERE domain = 'a.example'",
    )
    .unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    let err = v.pool_key(&conn, "a.example").unwrap_err().to_string();
    assert!(err.contains("does not decrypt") && !err.contains("CANARY"), "{err}");
    assert_eq!(v.list(&conn, None).unwrap().len(), 2);
}

#[test]
fn a_placement_edited_in_the_database_fails_to_decrypt() {
    let (_dir, conn, v) = setup();
    let header = SecurityScheme::ApiKey { location: agentfs::spec::KeyLocation::Header, name: "x-api-key".into() };
    v.set_pool_key(&conn, "a.example", &secret("CANARY_p"), Some(&header)).unwrap();
    assert!(v.pool_key(&conn, "a.example").unwrap().is_some());
    // Someone with write access to the file sends the key elsewhere: a query parameter.
    conn.execute("UPDATE keys SET placement = ?1", [r#"{"kind":"api_key","location":"query","name":"leak"}"#]).unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    let err = v.pool_key(&conn, "a.example").unwrap_err().to_string();
    assert!(err.contains("does not decrypt") && err.contains("placement"), "{err}");
    conn.execute("UPDATE keys SET placement = NULL", []).unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    assert!(v.pool_key(&conn, "a.example").is_err(), "placement removed");
}

#[test]
fn byok_keys_come_first_and_only_for_their_agent() {
    let (_dir, conn, v) = setup();
    v.set_pool_key(&conn, "a.example", &secret("POOL"), None).unwrap();
    v.set_key(&conn, KeyOwner::Agent("alice"), "a.example", &secret("ALICE"), None).unwrap();
    let get = |agent| v.credential(&conn, agent, "a.example").unwrap().unwrap();
    assert_eq!(get(Some("alice")).secret.expose(), "ALICE");
    assert_eq!(get(Some("alice")).scope, BYOK);
    assert_eq!(get(Some("bob")).secret.expose(), "POOL");
    assert_eq!(get(None).secret.expose(), "POOL");
    let alice: Vec<_> = v.list(&conn, Some(KeyOwner::Agent("alice"))).unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!((alice[0].scope.as_str(), alice[0].owner.as_str()), (BYOK, "alice"));
    assert!(v.list(&conn, Some(KeyOwner::Agent("bob"))).unwrap().is_empty());
    assert_eq!(v.list(&conn, None).unwrap().len(), 2);
    // A byok row moved to another agent does not decrypt.
    conn.execute("UPDATE keys SET owner = 'bob' WHERE owner = 'alice'", []).unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    assert!(v.credential(&conn, Some("bob"), "a.example").is_err());
    conn.execute("UPDATE keys SET owner = 'alice' WHERE owner = 'bob'", []).unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    assert_eq!(v.remove_own(&conn, KeyOwner::Agent("bob"), "a.example").unwrap(), 0);
    assert_eq!(v.remove_own(&conn, KeyOwner::Agent("alice"), "a.example").unwrap(), 1);
    assert_eq!(get(Some("alice")).secret.expose(), "POOL");
}

#[test]
fn either_cipher_decrypts_whatever_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::db::open(&dir.path().join("db")).unwrap();
    let key = dir.path().join("master.key");
    let x = Vault::open_file(&key, Cipher::XChaCha20Poly1305, &conn).unwrap();
    x.set_pool_key(&conn, "x.example", &secret("XCHACHA"), None).unwrap();
    let a = Vault::open_file(&key, Cipher::Aes256Gcm, &conn).unwrap();
    a.set_pool_key(&conn, "a.example", &secret("AESGCM"), None).unwrap();
    for v in [&x, &a] {
        assert_eq!(v.pool_key(&conn, "x.example").unwrap().unwrap().secret.expose(), "XCHACHA");
        assert_eq!(v.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "AESGCM");
    }
    let algs: Vec<Vec<u8>> = conn
        .prepare("SELECT ciphertext FROM keys ORDER BY domain")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!((algs[0][1], algs[1][1]), (1, 2), "the algorithm byte of each blob");
}

fn master_ids(conn: &Connection) -> Vec<Option<[u8; 4]>> {
    all_rows(conn).unwrap().iter().map(|r| blob::master_id_of(&r.ciphertext)).collect()
}

#[test]
fn rotation_reencrypts_every_key_and_replaces_the_file() {
    let (dir, conn, v) = setup();
    for i in 0..5 {
        v.set_pool_key(&conn, &format!("d{i}.example"), &secret(&format!("S{i}")), None).unwrap();
    }
    v.set_key(&conn, KeyOwner::Agent("alice"), "d0.example", &secret("A0"), None).unwrap();
    let before = std::fs::read(dir.path().join("master.key")).unwrap();
    let r = v.rotate(&conn).unwrap();
    assert_eq!(r.keys, 6);
    assert_ne!(r.old_master_id, r.new_master_id);
    let after = std::fs::read(dir.path().join("master.key")).unwrap();
    assert_ne!(before, after);
    assert!(!rotation::next_path(&dir.path().join("master.key")).exists());
    assert_eq!(v.check_all(&conn).unwrap(), 6);
    // A fresh vault on the new file reads everything; the old key reads nothing.
    let reopened = Vault::open_file(&dir.path().join("master.key"), Cipher::Aes256Gcm, &conn).unwrap();
    assert_eq!(reopened.pool_key(&conn, "d3.example").unwrap().unwrap().secret.expose(), "S3");
    let old: [u8; 32] = before.try_into().unwrap();
    let err = Vault::open_env(MasterKey::new(Zeroizing::new(old)), None, Cipher::Aes256Gcm, &conn).unwrap_err();
    assert!(err.to_string().contains(&format!("they name master key {}", r.new_master_id)), "{err}");
}

#[test]
fn an_interrupted_rotation_is_rolled_back_before_the_commit_and_finished_after() {
    let (dir, conn, v) = setup();
    let key_path = dir.path().join("master.key");
    v.set_pool_key(&conn, "a.example", &secret("A"), None).unwrap();
    let k1 = std::fs::read(&key_path).unwrap();

    // Killed after writing master.key.next, before the transaction committed.
    let k2 = MasterKey::generate();
    keyfile::write_atomically(&rotation::next_path(&key_path), k2.bytes()).unwrap();
    let v = Vault::open_file(&key_path, Cipher::Aes256Gcm, &conn).unwrap();
    assert!(!rotation::next_path(&key_path).exists(), "rolled back");
    assert_eq!(std::fs::read(&key_path).unwrap(), k1);
    assert_eq!(v.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "A");

    // Killed after the commit, before the rename.
    let k3 = MasterKey::generate();
    keyfile::write_atomically(&rotation::next_path(&key_path), k3.bytes()).unwrap();
    v.reseal_all(&conn, &k3).unwrap();
    assert_eq!(master_ids(&conn), vec![Some(k3.id())]);
    let v = Vault::open_file(&key_path, Cipher::Aes256Gcm, &conn).unwrap();
    assert!(!rotation::next_path(&key_path).exists(), "finished");
    assert_eq!(std::fs::read(&key_path).unwrap(), k3.bytes());
    assert_eq!(v.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "A");
}

#[test]
fn a_key_from_the_environment_cannot_rotate_but_moves_rows_from_the_old_one() {
    let (dir, conn, v) = setup();
    v.set_pool_key(&conn, "a.example", &secret("A"), None).unwrap();
    let file_key: [u8; 32] = std::fs::read(dir.path().join("master.key")).unwrap().try_into().unwrap();
    let env_key = envkey::parse(envkey::VAR, &"ab".repeat(32)).unwrap();
    let v = Vault::open_env(
        MasterKey::new(env_key.clone()),
        Some(MasterKey::new(Zeroizing::new(file_key))),
        Cipher::Aes256Gcm,
        &conn,
    )
    .unwrap();
    let env_id = MasterKey::new(env_key.clone()).id();
    assert_eq!(master_ids(&conn), vec![Some(env_id)], "re-encrypted at open");
    let err = v.rotate(&conn).unwrap_err().to_string();
    assert!(err.contains("NKMC_ENCRYPTION_KEY_OLD") && err.contains("openssl rand"), "{err}");
    let alone = Vault::open_env(MasterKey::new(env_key), None, Cipher::Aes256Gcm, &conn).unwrap();
    assert_eq!(alone.pool_key(&conn, "a.example").unwrap().unwrap().secret.expose(), "A");
}

#[test]
fn rows_written_in_format_1_still_open_and_rotation_rewrites_them_in_format_2() {
    let (dir, conn, v) = setup();
    let file_key: [u8; 32] = std::fs::read(dir.path().join("master.key")).unwrap().try_into().unwrap();
    let master = MasterKey::new(Zeroizing::new(file_key));
    let row = RowBinding { key_id: "legacy1", domain: "old.example", scope: POOL, owner: "", placement: None };
    let ct = blob::seal_v1(&master, row, b"LEGACY");
    conn.execute(
        "INSERT INTO keys (key_id, domain, scope, owner, ciphertext, created_at) VALUES ('legacy1', 'old.example', 'pool', '', ?1, 0)",
        [ct],
    )
    .unwrap();
    assert_eq!(v.pool_key(&conn, "old.example").unwrap().unwrap().secret.expose(), "LEGACY");
    assert_eq!(master_ids(&conn), vec![None], "format 1 names no master key");
    let r = v.rotate(&conn).unwrap();
    assert_eq!(master_ids(&conn), vec![Some(v.ring().current.id())]);
    assert_eq!(r.new_master_id, v.master_id());
    assert_eq!(v.pool_key(&conn, "old.example").unwrap().unwrap().secret.expose(), "LEGACY");
}

#[test]
fn a_wrong_master_key_is_refused_at_open_before_anything_is_written() {
    let (dir, conn, v) = setup();
    v.set_pool_key(&conn, "a.example", &secret("A"), None).unwrap();
    let other = envkey::parse(envkey::VAR, &"cd".repeat(32)).unwrap();
    let err = Vault::open_env(MasterKey::new(other), None, Cipher::Aes256Gcm, &conn).unwrap_err().to_string();
    assert!(err.contains("(NKMC_ENCRYPTION_KEY) is not the one the 1 stored keys") && err.contains("_OLD"), "{err}");
    // The key file replaced by another one: refused the same way.
    let key_path = dir.path().join("master.key");
    let original = std::fs::read(&key_path).unwrap();
    keyfile::write_atomically(&key_path, MasterKey::generate().bytes()).unwrap();
    let err = Vault::open_file(&key_path, Cipher::Aes256Gcm, &conn).unwrap_err().to_string();
    assert!(err.contains("(master.key) is not the one"), "{err}");
    // Missing: not silently replaced by a fresh key that opens nothing.
    std::fs::remove_file(&key_path).unwrap();
    let err = Vault::open_file(&key_path, Cipher::Aes256Gcm, &conn).unwrap_err().to_string();
    assert!(err.contains("is missing but 1 keys are stored") && !key_path.exists(), "{err}");
    keyfile::write_atomically(&key_path, &original).unwrap();
    Vault::open_file(&key_path, Cipher::Aes256Gcm, &conn).unwrap();
    assert_eq!(v.check_all(&conn).unwrap(), 1, "nothing was rewritten");
}

#[test]
fn the_same_secret_sealed_twice_differs_and_a_planted_plaintext_row_is_refused() {
    let (_dir, conn, v) = setup();
    v.set_pool_key(&conn, "a.example", &secret("SAME"), None).unwrap();
    v.set_key(&conn, KeyOwner::Agent("x"), "a.example", &secret("SAME"), None).unwrap();
    let cts: Vec<Vec<u8>> = all_rows(&conn).unwrap().into_iter().map(|r| r.ciphertext).collect();
    assert_ne!(cts[0][6..], cts[1][6..]);
    conn.execute("UPDATE keys SET ciphertext = CAST('sk-live-plaintext' AS BLOB) WHERE scope = 'pool'", []).unwrap();
    v.forget_held(); // an edit behind the vault's back is seen once it forgets
    let err = v.pool_key(&conn, "a.example").unwrap_err().to_string();
    assert!(err.contains("never accepted") || err.contains("unknown"), "{err}");
    assert!(!err.contains("sk-live"), "{err}");
}

#[test]
fn decrypted_credentials_are_held_until_the_keys_table_is_written() {
    let (_dir, conn, v) = setup();
    let get = |agent| v.credential(&conn, agent, "a.example").unwrap().map(|c| c.secret.expose().to_owned());
    assert_eq!(get(None), None);
    assert_eq!(v.held_len(), 1, "absence is held too");
    v.set_pool_key(&conn, "a.example", &secret("POOL1"), None).unwrap();
    assert_eq!(v.held_len(), 0, "a store forgets everything");
    assert_eq!(get(None).as_deref(), Some("POOL1"));
    assert_eq!(get(Some("alice")).as_deref(), Some("POOL1"), "alice has no key of her own");
    assert_eq!(v.held_len(), 2, "the pool answer and alice's absence");
    // Held: an edit behind the vault's back is not seen...
    conn.execute("UPDATE keys SET ciphertext = CAST('x' AS BLOB)", []).unwrap();
    assert_eq!(get(None).as_deref(), Some("POOL1"));
    // ...until a write through the vault.
    v.set_pool_key(&conn, "a.example", &secret("POOL2"), None).unwrap();
    assert_eq!(get(None).as_deref(), Some("POOL2"));
    // A new BYOK key replaces alice's held absence.
    v.set_key(&conn, KeyOwner::Agent("alice"), "a.example", &secret("ALICE"), None).unwrap();
    assert_eq!(get(Some("alice")).as_deref(), Some("ALICE"));
    // Removals forget.
    assert_eq!(v.remove_own(&conn, KeyOwner::Agent("alice"), "a.example").unwrap(), 1);
    assert_eq!(get(Some("alice")).as_deref(), Some("POOL2"));
    assert_eq!(v.remove(&conn, "a.example").unwrap(), 1);
    assert_eq!(get(None), None);
    // Rotation forgets, and the re-encrypted key still reads.
    v.set_pool_key(&conn, "a.example", &secret("POOL3"), None).unwrap();
    assert_eq!(get(None).as_deref(), Some("POOL3"));
    v.rotate(&conn).unwrap();
    assert_eq!(v.held_len(), 0);
    assert_eq!(get(None).as_deref(), Some("POOL3"));
}

#[test]
fn held_answers_are_bounded_and_a_lookup_that_raced_a_write_is_not_kept() {
    let held = held::Held::default();
    let (_, generation) = held.get(POOL, "", "a.example");
    held.forget_all(); // a write happened while the lookup ran
    held.keep(POOL, "", "a.example", generation, None);
    assert!(held.is_empty());
    for i in 0..held::CAPACITY + 5 {
        let (_, generation) = held.get(POOL, "", &format!("d{i}.example"));
        held.keep(POOL, "", &format!("d{i}.example"), generation, None);
    }
    assert!(held.len() <= held::CAPACITY, "{}", held.len());
    assert!(!held.is_empty());
}

//! Signed operator requests against the real OpenSSH tools: a request signed by
//! `ssh-keygen -Y sign -n vera` verifies in VERA, a signature VERA makes passes
//! `ssh-keygen -Y verify`, for Ed25519 and RSA (rsa-sha2-512); and every refusal:
//! unsigned, bad signature, unknown signer, missing role, expired, replayed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vera_audit::AuditError;
use vera_audit::operator::{
    Action, Authorizer, NAMESPACE, Request, SignedRequest, claim_nonce, read_private_key, sign,
};
use vera_protocol::Timestamp;
use vera_store::ObjectStore;
use vera_store::local::LocalStore;

fn now() -> Timestamp {
    vera_store::Clock::now(&vera_store::SystemClock)
}

fn keygen(dir: &Path, name: &str, kind: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut command = Command::new("ssh-keygen");
    command.args(["-q", "-N", "", "-C", name, "-t", kind, "-f"]).arg(&path);
    if kind == "rsa" {
        command.args(["-b", "2048"]);
    }
    assert!(command.status().unwrap().success(), "ssh-keygen -t {kind}");
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

struct Setup {
    dir: tempfile::TempDir,
    signers: PathBuf,
    roles: PathBuf,
}

fn setup(lines: &[String]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let signers = dir.path().join("allowed_signers");
    let roles = dir.path().join("roles");
    std::fs::write(&signers, lines.join("\n") + "\n").unwrap();
    std::fs::write(&roles, "alice@bank.example eraser,auditor\nbob@bank.example retention\n").unwrap();
    Setup { dir, signers, roles }
}

fn write_request(dir: &Path, name: &str, request: &Request) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, request.to_bytes()).unwrap();
    path
}

fn delete_request(principal: &str) -> Request {
    let mut args = serde_json::Map::new();
    args.insert("uid".into(), "records.alice".into());
    Request::new(Action::Delete, principal, now(), Duration::from_secs(600), args).unwrap()
}

fn ssh_sign(key: &Path, file: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(key)
        .arg(file)
        .status()
        .unwrap();
    assert!(status.success(), "ssh-keygen -Y sign");
}

#[test]
fn requests_signed_by_ssh_keygen_verify_in_vera_for_ed25519_and_rsa() {
    let keys = tempfile::tempdir().unwrap();
    let (ed_key, ed_pub) = keygen(keys.path(), "alice_ed25519", "ed25519");
    let (rsa_key, rsa_pub) = keygen(keys.path(), "alice_rsa", "rsa");
    let s =
        setup(&[format!("alice@bank.example namespaces=\"vera\" {ed_pub}"), format!("alice@bank.example {rsa_pub}")]);
    let authorizer = Authorizer::new(&s.signers, &s.roles).unwrap();
    for (key, name) in [(&ed_key, "ed.json"), (&rsa_key, "rsa.json")] {
        let file = write_request(s.dir.path(), name, &delete_request("alice@bank.example"));
        ssh_sign(key, &file);
        let signed = SignedRequest::read(&file).unwrap();
        let authorized = authorizer.check(&signed, Action::Delete, now()).unwrap();
        assert_eq!(authorized.request.principal, "alice@bank.example");
        assert!(authorized.fingerprint.starts_with("SHA256:"));
        // The signature covers these exact bytes: one changed byte fails.
        let mut tampered = signed.clone();
        tampered.bytes = bytes::Bytes::from(
            String::from_utf8(signed.bytes.to_vec()).unwrap().replace("records.alice", "records.alicf"),
        );
        assert!(matches!(authorizer.check(&tampered, Action::Delete, now()), Err(AuditError::BadSignature(_))));
    }
}

#[test]
fn signatures_vera_makes_pass_ssh_keygen_verify() {
    let keys = tempfile::tempdir().unwrap();
    for kind in ["ed25519", "rsa"] {
        let (key_path, public) = keygen(keys.path(), &format!("op_{kind}"), kind);
        let s = setup(&[format!("alice@bank.example {public}")]);
        let file = write_request(s.dir.path(), "request.json", &delete_request("alice@bank.example"));
        let key = read_private_key(&key_path).unwrap();
        let signature = sign(&key, &std::fs::read(&file).unwrap()).unwrap();
        let sig_path = s.dir.path().join("request.json.sig");
        std::fs::write(&sig_path, &signature).unwrap();
        let output = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", NAMESPACE, "-I", "alice@bank.example", "-f"])
            .arg(&s.signers)
            .arg("-s")
            .arg(&sig_path)
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(output.status.success(), "{kind}: {}", String::from_utf8_lossy(&output.stderr));
        // And VERA accepts its own signature too.
        let authorizer = Authorizer::new(&s.signers, &s.roles).unwrap();
        authorizer.check(&SignedRequest::read(&file).unwrap(), Action::Delete, now()).unwrap();
    }
}

#[tokio::test]
async fn unsigned_unknown_unauthorised_expired_and_replayed_requests_are_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (alice_key, alice_pub) = keygen(keys.path(), "alice", "ed25519");
    let (mallory_key, _) = keygen(keys.path(), "mallory", "ed25519");
    let (bob_key, bob_pub) = keygen(keys.path(), "bob", "ed25519");
    let s = setup(&[format!("alice@bank.example {alice_pub}"), format!("bob@bank.example {bob_pub}")]);
    let authorizer = Authorizer::new(&s.signers, &s.roles).unwrap();

    // Unsigned: no .sig next to the request.
    let file = write_request(s.dir.path(), "unsigned.json", &delete_request("alice@bank.example"));
    assert!(matches!(SignedRequest::read(&file), Err(AuditError::Unsigned(_))));

    // Signed by a key that is not alice's.
    let file = write_request(s.dir.path(), "mallory.json", &delete_request("alice@bank.example"));
    ssh_sign(&mallory_key, &file);
    let error = authorizer.check(&SignedRequest::read(&file).unwrap(), Action::Delete, now()).unwrap_err();
    assert!(matches!(error, AuditError::UnknownSigner(_)), "{error}");

    // A principal not in allowed_signers at all.
    let file = write_request(s.dir.path(), "carol.json", &delete_request("carol@bank.example"));
    ssh_sign(&alice_key, &file);
    let error = authorizer.check(&SignedRequest::read(&file).unwrap(), Action::Delete, now()).unwrap_err();
    assert!(matches!(error, AuditError::UnknownSigner(_)), "{error}");

    // Bob may retain and hold, not delete.
    let file = write_request(s.dir.path(), "bob.json", &delete_request("bob@bank.example"));
    ssh_sign(&bob_key, &file);
    let error = authorizer.check(&SignedRequest::read(&file).unwrap(), Action::Delete, now()).unwrap_err();
    assert!(matches!(error, AuditError::Forbidden(_)), "{error}");

    // Right signer, wrong action, wrong namespace, garbage signature.
    let file = write_request(s.dir.path(), "alice.json", &delete_request("alice@bank.example"));
    ssh_sign(&alice_key, &file);
    let signed = SignedRequest::read(&file).unwrap();
    assert!(matches!(authorizer.check(&signed, Action::Export, now()), Err(AuditError::Request(_))));
    let garbage = SignedRequest {
        bytes: signed.bytes.clone(),
        signature: "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n".into(),
    };
    assert!(matches!(authorizer.check(&garbage, Action::Delete, now()), Err(AuditError::BadSignature(_))));
    let other_ns = s.dir.path().join("ns.json");
    std::fs::copy(&file, &other_ns).unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "git", "-f"])
        .arg(&alice_key)
        .arg(&other_ns)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        authorizer.check(&SignedRequest::read(&other_ns).unwrap(), Action::Delete, now()),
        Err(AuditError::BadSignature(_))
    ));

    // Expired: checked eleven minutes later.
    let later = Timestamp::from_micros(now().as_micros() + 660_000_000).unwrap();
    assert!(matches!(authorizer.check(&signed, Action::Delete, later), Err(AuditError::Expired(_))));

    // Replayed: the nonce is claimed once on the store.
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(store_dir.path()).unwrap());
    let authorized = authorizer.check(&signed, Action::Delete, now()).unwrap();
    let key = claim_nonce(store.as_ref(), &authorized).await.unwrap();
    assert!(store.get(&key).await.unwrap().body.len() > 100, "the signed request is kept as evidence");
    let again = authorizer.check(&signed, Action::Delete, now()).unwrap();
    assert!(matches!(claim_nonce(store.as_ref(), &again).await, Err(AuditError::Replayed(_))));
}

#[test]
fn a_rotated_key_takes_effect_without_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let (old_key, old_pub) = keygen(keys.path(), "old", "ed25519");
    let (new_key, new_pub) = keygen(keys.path(), "new", "ed25519");
    let s = setup(&[format!("alice@bank.example {old_pub}")]);
    let authorizer = Authorizer::new(&s.signers, &s.roles).unwrap();
    let signed_with = |key: &Path, name: &str| {
        let file = write_request(s.dir.path(), name, &delete_request("alice@bank.example"));
        ssh_sign(key, &file);
        SignedRequest::read(&file).unwrap()
    };
    authorizer.check(&signed_with(&old_key, "a.json"), Action::Delete, now()).unwrap();
    assert!(authorizer.check(&signed_with(&new_key, "b.json"), Action::Delete, now()).is_err());
    // Rotate: the old key is removed, the new one added, in place.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&s.signers, format!("alice@bank.example {new_pub}\n")).unwrap();
    authorizer.check(&signed_with(&new_key, "c.json"), Action::Delete, now()).unwrap();
    let error = authorizer.check(&signed_with(&old_key, "d.json"), Action::Delete, now()).unwrap_err();
    assert!(matches!(error, AuditError::UnknownSigner(_)), "{error}");
}

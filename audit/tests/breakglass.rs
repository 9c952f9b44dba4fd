//! Break-glass: two signed requests by two operators with the break-glass role delete an
//! object under GOVERNANCE retention, audited with both names; one operator twice, a
//! missing role, mismatched arguments, a replay, COMPLIANCE retention and a legal hold
//! are all refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use vera_audit::AuditError;
use vera_audit::breakglass::{Operation, approve, execute};
use vera_audit::operator::{Action, Authorizer, NAMESPACE, Request, SignedRequest};
use vera_protocol::Timestamp;
use vera_protocol::message::AuditOutcome;
use vera_store::local::LocalStore;
use vera_store::{Clock, LockMode, ObjectStore, PutOptions, Retention, StoreErrorKind, SystemClock};

fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen").args(["-q", "-N", "", "-t", "ed25519", "-f"]).arg(&path).status().unwrap();
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned()
}

fn signed(dir: &Path, key: &str, principal: &str, operation: &Operation, ticket: &str) -> SignedRequest {
    let request = Request::new(
        Action::BreakGlass,
        principal,
        SystemClock.now(),
        Duration::from_secs(600),
        operation.args(ticket),
    )
    .unwrap();
    let file = dir.join(format!("{principal}-{}.json", request.nonce));
    std::fs::write(&file, request.to_bytes()).unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(dir.join(key))
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    SignedRequest::read(&file).unwrap()
}

#[tokio::test]
async fn two_break_glass_operators_bypass_governance_and_nothing_less_will_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lines: Vec<String> =
        ["alice", "carol", "dave"].iter().map(|who| format!("{who}@bank.example {}", keygen(d, who))).collect();
    std::fs::write(d.join("allowed_signers"), lines.join("\n")).unwrap();
    std::fs::write(
        d.join("roles"),
        "alice@bank.example break-glass\ncarol@bank.example break-glass,eraser\ndave@bank.example eraser\n",
    )
    .unwrap();
    let authorizer = Authorizer::new(d.join("allowed_signers"), d.join("roles")).unwrap();
    let store = LocalStore::open(d.join("store")).unwrap();
    let until = Timestamp::from_micros(SystemClock.now().as_micros() + 86_400_000_000).unwrap();
    for (key, mode) in
        [("gov/seg", LockMode::Governance), ("gov/held", LockMode::Governance), ("comp/seg", LockMode::Compliance)]
    {
        store
            .put(
                key,
                Bytes::from_static(b"data"),
                PutOptions::create().with_retention(Retention { mode, retain_until: until }),
            )
            .await
            .unwrap();
    }
    store.set_legal_hold("gov/held", true).await.unwrap();
    assert_eq!(store.delete("gov/seg").await.unwrap_err().kind, StoreErrorKind::Locked);
    let now = SystemClock.now();
    let delete = Operation::Delete { key: "gov/seg".into() };

    // One operator twice: refused.
    let (a1, a2) = (
        signed(d, "alice", "alice@bank.example", &delete, "INC-1"),
        signed(d, "alice", "alice@bank.example", &delete, "INC-1"),
    );
    let error = approve(&store, &authorizer, delete.clone(), "INC-1", [&a1, &a2], now).await.unwrap_err();
    assert!(matches!(error, AuditError::Forbidden(_)), "{error}");
    // A second operator without the role: refused.
    let d1 = signed(d, "dave", "dave@bank.example", &delete, "INC-1");
    let error = approve(&store, &authorizer, delete.clone(), "INC-1", [&a1, &d1], now).await.unwrap_err();
    assert!(matches!(error, AuditError::Forbidden(_)), "{error}");
    // Signed for another ticket: refused.
    let c_other = signed(d, "carol", "carol@bank.example", &delete, "INC-2");
    let error = approve(&store, &authorizer, delete.clone(), "INC-1", [&a1, &c_other], now).await.unwrap_err();
    assert!(matches!(error, AuditError::Request(_)), "{error}");
    assert_eq!(&store.get("gov/seg").await.unwrap().body[..], b"data", "nothing happened yet");

    // Alice and Carol: approved, executed, audited with both names.
    let c1 = signed(d, "carol", "carol@bank.example", &delete, "INC-1");
    let approved = approve(&store, &authorizer, delete.clone(), "INC-1", [&a1, &c1], now).await.unwrap();
    let (event, result) = execute(&store, &approved, now).await;
    result.unwrap();
    assert_eq!(event.outcome, AuditOutcome::Ok);
    assert_eq!(event.details["approved_by"], "alice@bank.example,carol@bank.example");
    assert_eq!(event.segment_key.as_deref(), Some("gov/seg"));
    assert_eq!(store.get("gov/seg").await.unwrap_err().kind, StoreErrorKind::NotFound);
    // The same two requests again: replay.
    let error = approve(&store, &authorizer, delete, "INC-1", [&a1, &c1], now).await.unwrap_err();
    assert!(matches!(error, AuditError::Replayed(_)), "{error}");

    // COMPLIANCE and a legal hold stand even with two approvals; the failure is audited.
    for key in ["comp/seg", "gov/held"] {
        let op = Operation::Delete { key: key.into() };
        let pair = [
            signed(d, "alice", "alice@bank.example", &op, "INC-3"),
            signed(d, "carol", "carol@bank.example", &op, "INC-3"),
        ];
        let approved = approve(&store, &authorizer, op, "INC-3", [&pair[0], &pair[1]], now).await.unwrap();
        let (event, result) = execute(&store, &approved, now).await;
        assert!(result.is_err());
        assert_eq!(event.outcome, AuditOutcome::Failed);
        assert_eq!(&store.get(key).await.unwrap().body[..], b"data");
    }

    // Shortening GOVERNANCE retention.
    store
        .put(
            "gov/short",
            Bytes::from_static(b"data"),
            PutOptions::create().with_retention(Retention { mode: LockMode::Governance, retain_until: until }),
        )
        .await
        .unwrap();
    let sooner = Timestamp::from_micros(until.as_micros() - 3_600_000_000).unwrap();
    let op = Operation::Shorten { key: "gov/short".into(), until: sooner };
    let pair = [
        signed(d, "carol", "carol@bank.example", &op, "INC-4"),
        signed(d, "alice", "alice@bank.example", &op, "INC-4"),
    ];
    let approved = approve(&store, &authorizer, op, "INC-4", [&pair[0], &pair[1]], now).await.unwrap();
    execute(&store, &approved, now).await.1.unwrap();
    assert_eq!(store.head("gov/short").await.unwrap().retention.unwrap().retain_until, sooner);
}

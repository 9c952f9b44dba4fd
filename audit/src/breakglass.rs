//! Break-glass under GOVERNANCE retention: deleting an object, or shortening its
//! retention, past its lock. It needs two signed requests ([`Action::BreakGlass`]) for
//! the same operation, by two different principals with different keys, both holding
//! the `break-glass` role. This two-person rule stands in for MFA delete. COMPLIANCE
//! retention and legal holds are never bypassed. The bypass is audited: the caller
//! publishes the [`AuditEvent`] that [`execute`] returns, naming both approvers.

use std::collections::BTreeMap;

use vera_protocol::Timestamp;
use vera_protocol::message::{AuditAction, AuditEvent, AuditOutcome};
use vera_store::{GovernanceBypass, LockMode, ObjectStore, Retention};

use crate::AuditError;
use crate::operator::{Action, Authorized, Authorizer, SignedRequest, claim_nonce};

/// What the two operators approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Delete the object (current version) despite its GOVERNANCE retention.
    Delete { key: String },
    /// Shorten its GOVERNANCE retention to `until`.
    Shorten { key: String, until: Timestamp },
}

impl Operation {
    pub fn key(&self) -> &str {
        match self {
            Operation::Delete { key } | Operation::Shorten { key, .. } => key,
        }
    }

    /// The `args` both signed requests must carry.
    pub fn args(&self, ticket: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut args = serde_json::Map::new();
        match self {
            Operation::Delete { key } => {
                args.insert("operation".into(), "delete".into());
                args.insert("key".into(), key.clone().into());
            }
            Operation::Shorten { key, until } => {
                args.insert("operation".into(), "shorten-retention".into());
                args.insert("key".into(), key.clone().into());
                args.insert("until".into(), until.to_rfc3339().into());
            }
        }
        args.insert("ticket".into(), ticket.into());
        args
    }
}

/// Two checked, claimed approvals of one operation.
#[derive(Debug, Clone)]
pub struct Approved {
    pub operation: Operation,
    pub ticket: String,
    pub approvers: [Authorized; 2],
}

/// Checks both requests (signature, role, expiry, same arguments as `operation`), that
/// they come from two principals with two keys, and claims both nonces.
pub async fn approve(
    store: &dyn ObjectStore,
    authorizer: &Authorizer,
    operation: Operation,
    ticket: &str,
    requests: [&SignedRequest; 2],
    now: Timestamp,
) -> Result<Approved, AuditError> {
    let expected = operation.args(ticket);
    let mut approvers = Vec::with_capacity(2);
    for signed in requests {
        let authorized = authorizer.check(signed, Action::BreakGlass, now)?;
        if authorized.request.args != expected {
            return Err(AuditError::Request(format!(
                "a break-glass request is for other arguments: signed {}, given {}",
                serde_json::Value::Object(authorized.request.args.clone()),
                serde_json::Value::Object(expected.clone())
            )));
        }
        approvers.push(authorized);
    }
    let [first, second]: [Authorized; 2] =
        approvers.try_into().map_err(|_| AuditError::Request("two requests are needed".into()))?;
    if first.request.principal == second.request.principal || first.fingerprint == second.fingerprint {
        return Err(AuditError::Forbidden(format!(
            "break-glass needs two different operators; both requests are by {} ({})",
            first.request.principal, first.fingerprint
        )));
    }
    claim_nonce(store, &first).await?;
    claim_nonce(store, &second).await?;
    Ok(Approved { operation, ticket: ticket.to_owned(), approvers: [first, second] })
}

/// Performs an approved bypass and returns the audit event recording it (outcome `ok`,
/// or `failed` with the error when the store refused).
pub async fn execute(
    store: &dyn ObjectStore,
    approved: &Approved,
    now: Timestamp,
) -> (AuditEvent, Result<(), AuditError>) {
    let (action, bypass) = match &approved.operation {
        Operation::Delete { .. } => (AuditAction::Delete, GovernanceBypass::Delete),
        Operation::Shorten { until, .. } => (
            AuditAction::Retain,
            GovernanceBypass::Shorten(Retention { mode: LockMode::Governance, retain_until: *until }),
        ),
    };
    let result = store.bypass_governance(approved.operation.key(), bypass).await.map_err(AuditError::from);
    let [first, second] = &approved.approvers;
    let mut details = BTreeMap::new();
    details.insert("break_glass".to_owned(), "governance-bypass".to_owned());
    details.insert("approved_by".to_owned(), format!("{},{}", first.request.principal, second.request.principal));
    details.insert("key_fingerprints".to_owned(), format!("{},{}", first.fingerprint, second.fingerprint));
    details.insert("nonces".to_owned(), format!("{},{}", first.request.nonce, second.request.nonce));
    if let Operation::Shorten { until, .. } = &approved.operation {
        details.insert("retain_until".to_owned(), until.to_rfc3339());
    }
    if let Err(error) = &result {
        details.insert("error".to_owned(), error.to_string().chars().take(300).collect());
    }
    let event = AuditEvent {
        action,
        outcome: if result.is_ok() { AuditOutcome::Ok } else { AuditOutcome::Failed },
        at: now,
        actor: first.request.principal.clone(),
        request_id: Some(approved.ticket.clone()),
        uid: None,
        segment_key: Some(approved.operation.key().to_owned()),
        details,
    };
    (event, result)
}

//! One error type for every backend, with a coarse kind callers act on.

use std::fmt;

/// What the caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No object at that key.
    NotFound,
    /// Create-if-absent found an object already there.
    AlreadyExists,
    /// Compare-and-swap lost: the object changed (or vanished) since it was read.
    Precondition,
    /// Refused by Object Lock: retention not expired, legal hold, or an attempt to
    /// shorten COMPLIANCE retention. S3 answers these with 403 AccessDenied.
    Locked,
    /// Worth retrying: timeouts, throttling, 5xx.
    Transient,
    /// The store returned something inconsistent.
    Corrupt,
    /// The request itself is invalid (bad key, bad range).
    InvalidInput,
    /// Misconfiguration: wrong bucket, missing Object Lock, bad credentials.
    Config,
    /// Anything else from the backend.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub key: String,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (key {:?}, kind {:?})", self.message, self.key, self.kind)
    }
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, key: &str, message: impl Into<String>) -> Self {
        StoreError { kind, key: key.to_owned(), message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn io(key: &str, error: std::io::Error) -> Self {
        let kind = match error.kind() {
            std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => StoreErrorKind::Transient,
            _ => StoreErrorKind::Other,
        };
        StoreError::new(kind, key, "local i/o failed").with_source(error)
    }

    pub fn is(&self, kind: StoreErrorKind) -> bool {
        self.kind == kind
    }
}

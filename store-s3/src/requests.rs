//! Counting S3 requests on the wire, as the bill would.
//!
//! An SDK interceptor sees every HTTP request the client transmits, retries and multipart
//! parts included, and sorts it into the classes S3 prices separately. This is the count
//! a load test or an operator should compare, not the number of `ObjectStore` calls (one
//! `put_source` of a large segment is many requests).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use vera_store::counting::RequestCounts;

/// The request class of one HTTP request to S3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// PutObject, UploadPart, CreateMultipartUpload, CompleteMultipartUpload, CopyObject.
    Put,
    /// GetObject, whole or ranged.
    Get,
    Head,
    /// ListObjectsV2 and friends (a GET on the bucket).
    List,
    /// DeleteObject, AbortMultipartUpload.
    Delete,
    /// PutObjectRetention, PutObjectLegalHold.
    LockUpdate,
    /// Bucket configuration and anything else.
    Other,
}

/// Sorts an HTTP request by method and query parameters, which tell the S3 operations apart
/// whether the request is path-style or virtual-hosted (the SDK always sends ListObjectsV2
/// with `list-type=2`).
pub fn classify(method: &str, uri: &str) -> RequestClass {
    let query = uri.split_once('?').map_or("", |(_, query)| query);
    let params: Vec<&str> = query.split('&').map(|pair| pair.split('=').next().unwrap_or("")).collect();
    let has = |name: &str| params.contains(&name);
    match method {
        "PUT" if has("retention") || has("legal-hold") => RequestClass::LockUpdate,
        "PUT" if has("object-lock") || has("versioning") || has("lifecycle") => RequestClass::Other,
        "PUT" | "POST" if !has("delete") => RequestClass::Put,
        "POST" => RequestClass::Delete,
        "GET" if has("list-type") || has("versions") || has("uploads") => RequestClass::List,
        "GET" if has("object-lock") || has("retention") || has("legal-hold") || has("location") => RequestClass::Other,
        "GET" => RequestClass::Get,
        "HEAD" => RequestClass::Head,
        "DELETE" => RequestClass::Delete,
        _ => RequestClass::Other,
    }
}

/// Counts every transmitted request into `RequestCounts` (bytes from Content-Length).
#[derive(Debug)]
pub struct RequestCounter {
    counts: Arc<RequestCounts>,
}

impl RequestCounter {
    pub fn new(counts: Arc<RequestCounts>) -> Self {
        RequestCounter { counts }
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "VeraRequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let class = classify(request.method(), request.uri());
        if class == RequestClass::Get {
            cfg.interceptor_state().store_put(CountBody);
        }
        let counter = match class {
            RequestClass::Put => &self.counts.puts,
            RequestClass::Get => &self.counts.gets,
            RequestClass::Head => &self.counts.heads,
            RequestClass::List => &self.counts.lists,
            RequestClass::Delete => &self.counts.deletes,
            RequestClass::LockUpdate => &self.counts.lock_updates,
            RequestClass::Other => return Ok(()),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if request.method() == "PUT" {
            let sent = request.headers().get("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            self.counts.bytes_put.fetch_add(sent, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Counts the body of a GetObject from its Content-Length when the response arrives,
    /// before the SDK takes the (streaming) response to deserialize it, and a GetObject
    /// answered with a 5xx.
    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response();
        if cfg.load::<CountBody>().is_some() && response.status().is_success() {
            let got = response.headers().get("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            self.counts.bytes_got.fetch_add(got, Ordering::Relaxed);
        }
        if cfg.load::<CountBody>().is_some() && response.status().is_server_error() {
            self.counts.get_server_errors.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Marks an operation whose response body is object data (GetObject), for
/// `read_before_deserialization`.
#[derive(Debug, Clone, Copy)]
struct CountBody;

impl aws_smithy_types::config_bag::Storable for CountBody {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classed_as_billed() {
        let cases = [
            ("PUT", "http://s3/b/segments/k.vera", RequestClass::Put),
            ("PUT", "http://s3/b/k?partNumber=2&uploadId=x", RequestClass::Put),
            ("POST", "http://s3/b/k?uploads", RequestClass::Put),
            ("POST", "http://s3/b/k?uploadId=x", RequestClass::Put),
            ("POST", "http://s3/b?delete", RequestClass::Delete),
            ("GET", "http://s3/b/k", RequestClass::Get),
            ("GET", "http://b.s3.example/k?x-id=GetObject", RequestClass::Get),
            ("GET", "http://s3/b?list-type=2&prefix=p", RequestClass::List),
            ("GET", "http://s3/b/?list-type=2", RequestClass::List),
            ("GET", "http://s3/b?object-lock", RequestClass::Other),
            ("HEAD", "http://s3/b/k", RequestClass::Head),
            ("DELETE", "http://s3/b/k?versionId=1", RequestClass::Delete),
            ("DELETE", "http://s3/b/k?uploadId=x", RequestClass::Delete),
            ("PUT", "http://s3/b/k?retention", RequestClass::LockUpdate),
            ("PUT", "http://s3/b/k?legal-hold", RequestClass::LockUpdate),
            ("PUT", "http://s3/b?object-lock", RequestClass::Other),
        ];
        for (method, uri, class) in cases {
            assert_eq!(classify(method, uri), class, "{method} {uri}");
        }
    }
}

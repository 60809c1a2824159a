//! A small S3-compatible object store, so that the demo and examples can upload local photos
//! without leaving the machine: path-style `PUT`, `GET`, `HEAD` and `DELETE` of
//! `/s3/BUCKET/KEY` on the sandbox's own listener, objects in memory, in the buckets
//! [`SandboxConfig::s3_buckets`](super::SandboxConfig::s3_buckets) names.
//!
//! Every request must carry a presigned SigV4 query (what the client sends) made with
//! [`S3_ACCESS_KEY`] / [`S3_SECRET_KEY`]. The signature is checked by signing the same request
//! again with `rusty-s3` at the request's own `X-Amz-Date` and comparing; an expired URL, a
//! date more than 15 minutes off, an unknown key id or a wrong signature gets the S3 error
//! document a real bucket answers (`AccessDenied`, `RequestTimeTooSkewed`,
//! `InvalidAccessKeyId`, `SignatureDoesNotMatch`). The sandbox's input fetcher fetches the
//! presigned URLs the client submits from here, as the real gateway fetches them from a bucket.
//! Bodies are capped at the server's 1 MiB, which the bundled photos are far below.

use super::http::{Request, Response};
use super::Shared;
use rusty_s3::actions::{DeleteObject, GetObject, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The path prefix of the store on the sandbox's listener.
pub const S3_PATH: &str = "/s3";
/// The key id the store accepts. A sandbox value, not a secret of anyone's.
pub const S3_ACCESS_KEY: &str = "SANDBOXACCESSKEY0001";
/// The secret the store accepts. A sandbox value, not a secret of anyone's.
pub const S3_SECRET_KEY: &str = "sandbox-secret-key-for-local-uploads";
/// How far a request's date may be from the sandbox's clock, as on S3.
const MAX_SKEW_SECS: i64 = 15 * 60;
/// The longest lifetime SigV4 allows a presigned URL.
const MAX_EXPIRES_SECS: u64 = 7 * 24 * 3600;

/// One stored object.
#[derive(Clone)]
struct Object {
    bytes: Vec<u8>,
    content_type: String,
}

/// The buckets and their objects.
#[derive(Default)]
pub struct Store {
    buckets: Mutex<BTreeMap<String, BTreeMap<String, Object>>>,
}

impl Store {
    pub fn new(buckets: &[String]) -> Store {
        Store {
            buckets: Mutex::new(
                buckets
                    .iter()
                    .map(|b| (b.clone(), BTreeMap::new()))
                    .collect(),
            ),
        }
    }

    /// The objects of a bucket, as (key, bytes), in key order.
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        self.buckets
            .lock()
            .unwrap()
            .get(bucket)
            .map(|objects| {
                objects
                    .iter()
                    .map(|(k, o)| (k.clone(), o.bytes.len() as u64))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An S3 error answer.
struct S3Error {
    status: u16,
    code: &'static str,
    message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> S3Error {
    S3Error {
        status,
        code,
        message: message.into(),
    }
}

impl S3Error {
    fn response(self, resource: &str) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource></Error>\n",
            self.code,
            xml_escape(&self.message),
            xml_escape(resource)
        );
        Response::new(self.status)
            .header("Content-Type", "application/xml")
            .bytes(body.into_bytes())
    }
}

/// Answers a request under [`S3_PATH`]; `rest` is the path after `/s3/`.
pub fn handle(shared: &Shared, req: &Request, rest: &str) -> Response {
    let resource = format!("/{rest}");
    let answer = parse_target(rest)
        .and_then(|(bucket, key)| {
            let exists = shared.s3.buckets.lock().unwrap().contains_key(&bucket);
            if !exists {
                return Err(refuse(
                    404,
                    "NoSuchBucket",
                    "The specified bucket does not exist",
                ));
            }
            if let Err(e) = authenticate(req, &bucket, &key) {
                shared.stats.lock().unwrap().stats.s3_refused += 1;
                return Err(e);
            }
            carry_out(shared, req, &bucket, &key)
        })
        .unwrap_or_else(|e| e.response(&resource));
    if req.is_head() && answer.status >= 400 {
        // A HEAD answer has no body; S3 sends the status alone.
        return Response::new(answer.status);
    }
    answer
}

/// Bucket and key of `BUCKET/KEY`, the key percent-decoded.
fn parse_target(rest: &str) -> Result<(String, String), S3Error> {
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let key = super::paths::decode_path(key)
        .ok_or_else(|| refuse(400, "InvalidURI", "The key is not valid UTF-8"))?;
    if bucket.is_empty() || key.is_empty() {
        return Err(refuse(
            501,
            "NotImplemented",
            "The sandbox store serves objects only: /s3/BUCKET/KEY",
        ));
    }
    Ok((bucket.to_string(), key))
}

fn carry_out(shared: &Shared, req: &Request, bucket: &str, key: &str) -> Result<Response, S3Error> {
    let mut buckets = shared.s3.buckets.lock().unwrap();
    let objects = buckets
        .get_mut(bucket)
        .ok_or_else(|| refuse(404, "NoSuchBucket", "The specified bucket does not exist"))?;
    let missing = || refuse(404, "NoSuchKey", "The specified key does not exist.");
    match req.method.as_str() {
        "PUT" => {
            let content_type = req
                .header("Content-Type")
                .unwrap_or("application/octet-stream")
                .to_string();
            let etag = etag(&req.body);
            objects.insert(
                key.to_string(),
                Object {
                    bytes: req.body.clone(),
                    content_type,
                },
            );
            shared.stats.lock().unwrap().stats.s3_puts += 1;
            Ok(Response::new(200).header("ETag", etag))
        }
        "GET" | "HEAD" => {
            let object = objects.get(key).ok_or_else(missing)?;
            Ok(Response::new(200)
                .header("Content-Type", object.content_type.clone())
                .header("ETag", etag(&object.bytes))
                .bytes(object.bytes.clone()))
        }
        "DELETE" => {
            objects.remove(key);
            Ok(Response::new(204))
        }
        _ => Err(refuse(
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )),
    }
}

fn etag(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("\"{}\"", &crate::digest::hex(&Sha256::digest(bytes))[..32])
}

/// The presigned query of a request, checked by signing the same request again.
fn authenticate(req: &Request, bucket: &str, key: &str) -> Result<(), S3Error> {
    if req.header("Authorization").is_some() {
        return Err(refuse(
            400,
            "InvalidRequest",
            "The sandbox store takes presigned URLs (SigV4 query parameters) only",
        ));
    }
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(signature) = get("X-Amz-Signature") else {
        return Err(refuse(403, "AccessDenied", "Access Denied"));
    };
    if get("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(refuse(
            400,
            "AuthorizationQueryParametersError",
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
        ));
    }
    let credential = get("X-Amz-Credential").unwrap_or_default();
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, _day, region, "s3", "aws4_request"] = scope[..] else {
        return Err(refuse(
            400,
            "AuthorizationQueryParametersError",
            "X-Amz-Credential must be KEY/DATE/REGION/s3/aws4_request",
        ));
    };
    if access_key != S3_ACCESS_KEY {
        return Err(refuse(
            403,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    }
    if get("X-Amz-Security-Token").is_some() {
        return Err(refuse(
            400,
            "InvalidToken",
            "The sandbox store issues no session tokens",
        ));
    }
    let (signed_at, expires) = validity(get("X-Amz-Date"), get("X-Amz-Expires"))?;
    let host = req.header("Host").unwrap_or_default();
    let expected = sign_again(req, &query, host, bucket, key, region, signed_at, expires)?;
    if !same_secret(expected.as_bytes(), signature.as_bytes()) {
        return Err(refuse(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok(())
}

/// The request's signing time and lifetime, refused when skewed or expired.
fn validity(date: Option<&str>, expires: Option<&str>) -> Result<(i64, u64), S3Error> {
    let bad = |m: &str| refuse(400, "AuthorizationQueryParametersError", m);
    let signed_at = date
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y%m%dT%H%M%SZ").ok())
        .ok_or_else(|| {
            bad("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        })?
        .and_utc()
        .timestamp();
    let expires: u64 = expires
        .and_then(|e| e.parse().ok())
        .filter(|e| (1..=MAX_EXPIRES_SECS).contains(e))
        .ok_or_else(|| bad("X-Amz-Expires must be a number of seconds from 1 to 604800"))?;
    let now = chrono::Utc::now().timestamp();
    if signed_at - now > MAX_SKEW_SECS {
        return Err(refuse(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        ));
    }
    if now > signed_at + expires as i64 {
        return Err(refuse(403, "AccessDenied", "Request has expired"));
    }
    Ok((signed_at, expires))
}

/// The signature `rusty-s3` gives the same request at the same time.
#[allow(clippy::too_many_arguments)]
fn sign_again(
    req: &Request,
    query: &[(String, String)],
    host: &str,
    bucket: &str,
    key: &str,
    region: &str,
    signed_at: i64,
    expires: u64,
) -> Result<String, S3Error> {
    let endpoint = url::Url::parse(&format!("http://{host}{S3_PATH}"))
        .map_err(|_| refuse(400, "InvalidArgument", "The Host header is not valid"))?;
    let bucket = Bucket::new(
        endpoint,
        UrlStyle::Path,
        bucket.to_string(),
        region.to_string(),
    )
    .map_err(|_| refuse(400, "InvalidBucketName", "The bucket name is not valid"))?;
    let credentials = Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY);
    let time = jiff::Timestamp::from_second(signed_at).map_err(|_| {
        refuse(
            400,
            "AuthorizationQueryParametersError",
            "X-Amz-Date is out of range",
        )
    })?;
    let expires = Duration::from_secs(expires);
    let signed_headers = query
        .iter()
        .find(|(k, _)| k == "X-Amz-SignedHeaders")
        .map(|(_, v)| v.as_str())
        .unwrap_or("host");
    let extra_query = query.iter().filter(|(k, _)| !k.starts_with("X-Amz-"));
    macro_rules! sign {
        ($action:expr) => {{
            let mut action = $action;
            for name in signed_headers.split(';').filter(|h| *h != "host") {
                let value = req.header(name).unwrap_or_default().to_string();
                action.headers_mut().insert(name.to_string(), value);
            }
            for (k, v) in extra_query {
                action.query_mut().insert(k.clone(), v.clone());
            }
            action.sign_with_time(expires, &time)
        }};
    }
    let url = match req.method.as_str() {
        "PUT" => sign!(PutObject::new(&bucket, Some(&credentials), key)),
        "GET" => sign!(GetObject::new(&bucket, Some(&credentials), key)),
        "HEAD" => sign!(HeadObject::new(&bucket, Some(&credentials), key)),
        "DELETE" => sign!(DeleteObject::new(&bucket, Some(&credentials), key)),
        _ => {
            return Err(refuse(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            ))
        }
    };
    Ok(url
        .query_pairs()
        .find(|(k, _)| k == "X-Amz-Signature")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default())
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Sandbox, SandboxConfig};
    use crate::storage::{Storage, StorageConfig, StorageError};

    fn storage(sandbox: &Sandbox, bucket: &str, key: &str, secret: &str) -> Storage {
        let config = StorageConfig {
            endpoint: Some(sandbox.s3_endpoint()),
            path_style: true,
            ..StorageConfig::new(format!("s3://{bucket}/in").parse().unwrap())
        };
        Storage::with_credentials(
            config,
            Credentials::new(key.to_string(), secret.to_string()),
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
        )
        .unwrap()
    }

    fn code(e: StorageError) -> String {
        match e {
            StorageError::Credentials { code, .. } => code,
            StorageError::NoSuchBucket { .. } => "NoSuchBucket".into(),
            StorageError::ClockSkew { .. } => "RequestTimeTooSkewed".into(),
            other => other.to_string(),
        }
    }

    #[test]
    fn presigned_requests_are_checked_and_carried_out() {
        let sandbox = Sandbox::start(SandboxConfig {
            s3_buckets: vec!["photos".into()],
            ..SandboxConfig::default()
        })
        .unwrap();
        let good = storage(&sandbox, "photos", S3_ACCESS_KEY, S3_SECRET_KEY);
        assert!(!good.exists("in/a b.png").unwrap());
        assert_eq!(
            good.put_bytes("in/a b.png", b"abc", "image/png").unwrap(),
            200
        );
        assert!(good.exists("in/a b.png").unwrap());
        assert_eq!(good.get("in/a b.png", 10).unwrap(), b"abc");
        assert_eq!(sandbox.s3_objects("photos"), vec![("in/a b.png".into(), 3)]);
        // A presigned GET works for any client, as it does for the gateway's fetcher.
        let url = good.presign_get("in/a b.png");
        assert_eq!(ureq::get(&url).call().unwrap().status().as_u16(), 200);
        // Tampering with the path, a wrong secret, an unknown key id, a missing bucket.
        let other = url.replace("a%20b.png", "c.png");
        let status = ureq::get(&other).call().err().unwrap().to_string();
        assert!(status.contains("403"), "{status}");
        let wrong = storage(&sandbox, "photos", S3_ACCESS_KEY, "not-the-secret");
        let e = wrong.put_bytes("in/x.png", b"x", "image/png").unwrap_err();
        assert_eq!(code(e), "SignatureDoesNotMatch");
        let unknown = storage(&sandbox, "photos", "AKIAOTHER", S3_SECRET_KEY);
        let e = unknown
            .put_bytes("in/x.png", b"x", "image/png")
            .unwrap_err();
        assert_eq!(code(e), "InvalidAccessKeyId");
        let missing = storage(&sandbox, "nope", S3_ACCESS_KEY, S3_SECRET_KEY);
        let e = missing
            .put_bytes("in/x.png", b"x", "image/png")
            .unwrap_err();
        assert_eq!(code(e), "NoSuchBucket");
        assert_eq!(sandbox.stats().s3_refused, 3);
        assert_eq!(sandbox.stats().s3_puts, 1);
        assert_eq!(good.delete("in/a b.png").unwrap(), 204);
        assert!(sandbox.s3_objects("photos").is_empty());
    }

    #[test]
    fn expired_and_skewed_requests_are_refused() {
        let sandbox = Sandbox::start(SandboxConfig {
            s3_buckets: vec!["photos".into()],
            ..SandboxConfig::default()
        })
        .unwrap();
        let bucket = Bucket::new(
            url::Url::parse(&sandbox.s3_endpoint()).unwrap(),
            UrlStyle::Path,
            "photos",
            "us-east-1",
        )
        .unwrap();
        let credentials = Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY);
        let signed = |offset: i64, ttl: u64| {
            let at = jiff::Timestamp::from_second(chrono::Utc::now().timestamp() + offset).unwrap();
            PutObject::new(&bucket, Some(&credentials), "in/k.png")
                .sign_with_time(Duration::from_secs(ttl), &at)
                .to_string()
        };
        let answer = |url: String| match ureq::put(&url).send(&b"x"[..]) {
            Ok(r) => r.status().as_u16().to_string(),
            Err(ureq::Error::StatusCode(s)) => s.to_string(),
            Err(e) => e.to_string(),
        };
        assert_eq!(answer(signed(0, 60)), "200");
        assert_eq!(answer(signed(-3600, 60)), "403", "expired");
        assert_eq!(answer(signed(3600, 60)), "403", "an hour ahead");
        assert_eq!(
            answer(signed(-60, 3600)),
            "200",
            "signed a minute ago, still valid"
        );
        let skewed = ureq::put(&signed(3600, 60))
            .config()
            .http_status_as_error(false)
            .build()
            .send(&b"x"[..])
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(
            skewed.contains("<Code>RequestTimeTooSkewed</Code>"),
            "{skewed}"
        );
    }
}

//! AWS Signature Version 4, by AWS's own signer (`aws-sigv4`): request
//! headers for depot's own calls, query parameters for the presigned GETs
//! the data service redirects readers to. The payload is declared
//! `UNSIGNED-PAYLOAD`: hashing every byte with SHA-256 would cost as much
//! CPU as inflating it, and each object (or part) carries its Content-MD5,
//! which the server checks instead.
//!
//! What is built here is only the URL we send (path-style, percent-encoded
//! once); the canonical request is the signer's.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningError,
    SigningInstructions, SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;

use super::client::Credentials;

/// Why a request could not be signed (a URL or header the signer refuses;
/// never the server's doing).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign the request: {0}")]
    Sign(#[from] SigningError),
    #[error("cannot sign the request: {0}")]
    Params(#[from] v4::signing_params::BuildError),
    /// S3 refuses presigned URLs valid for longer than 7 days.
    #[error("a presigned URL may last 1 s to 7 days, not {0:?}")]
    Expiry(Duration),
}

/// Percent-encoding of SigV4: every byte but `A-Za-z0-9-_.~` (and `/` in
/// a path, when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The query string sent: pairs encoded and sorted, as SigV4 canonicalises
/// them, so what the server reads back is what was signed.
pub fn query_string(query: &[(String, String)]) -> String {
    let mut q: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    q.sort();
    q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// S3's settings of the signer: the path is signed as sent (encoded once,
/// never normalised: `a/../b` and `a//b` are keys of their own).
fn settings(location: SignatureLocation) -> SigningSettings {
    let mut s = SigningSettings::default();
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    s.signature_location = location;
    s
}

/// `req` signed for S3 in `region` at `time` with `settings`.
fn signed(
    req: SignableRequest,
    creds: &Credentials,
    region: &str,
    time: SystemTime,
    settings: SigningSettings,
) -> Result<SigningInstructions, SignError> {
    let identity = aws_credential_types::Credentials::new(&creds.key_id, &creds.secret, None, None, "depot").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings)
        .build()?
        .into();
    Ok(sign(req, &params)?.into_parts().0)
}

/// The headers that sign request `method url` (`url` complete and already
/// encoded; `headers` lower-case, `host` among them): `authorization`,
/// `x-amz-date` and `x-amz-content-sha256`. `payload_sha256` is the body's
/// hash when it was computed, else the body goes unsigned.
pub fn sign_headers(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    payload_sha256: Option<&str>,
    creds: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, SignError> {
    let mut s = settings(SignatureLocation::Headers);
    s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let body = match payload_sha256 {
        Some(h) => SignableBody::Precomputed(h.to_owned()),
        None => SignableBody::UnsignedPayload,
    };
    let req = SignableRequest::new(method, url, headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), body)?;
    let instructions = signed(req, creds, region, time, s)?;
    Ok(instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

/// `url` (a GET of one object, complete and encoded, without a query) with
/// the query parameters that let anyone holding it GET the object until
/// `expires` has passed from `time`: what the data service redirects a
/// reader to (`307`), so that no byte of a release goes through depot.
pub fn presign(
    method: &str,
    url: &str,
    creds: &Credentials,
    region: &str,
    time: SystemTime,
    expires: Duration,
) -> Result<String, SignError> {
    if expires < Duration::from_secs(1) || expires > Duration::from_secs(7 * 24 * 3600) {
        return Err(SignError::Expiry(expires));
    }
    let mut s = settings(SignatureLocation::QueryParams);
    s.expires_in = Some(expires);
    let req = SignableRequest::new(method, url, std::iter::empty(), SignableBody::UnsignedPayload)?;
    let instructions = signed(req, creds, region, time, s)?;
    let query: Vec<String> = instructions
        .params()
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{}", query.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials { key_id: "AKIAIOSFODNN7EXAMPLE".into(), secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into() }
    }

    /// 2013-05-24T00:00:00Z, the date of AWS's examples.
    fn example_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    /// The GET Object example of AWS's SigV4 documentation ("Example:
    /// GET Object", examplebucket, 20130524), with its published signature.
    #[test]
    fn aws_documented_example() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers = vec![
            ("host".to_owned(), "examplebucket.s3.amazonaws.com".to_owned()),
            ("range".to_owned(), "bytes=0-9".to_owned()),
        ];
        let signed = sign_headers(
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            &headers,
            Some(empty),
            &example_creds(),
            "us-east-1",
            example_time(),
        )
        .unwrap();
        let get = |name: &str| signed.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(
            get("authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                 Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
        assert_eq!(get("x-amz-date"), Some("20130524T000000Z"));
        assert_eq!(get("x-amz-content-sha256"), Some(empty));
    }

    /// The presigned URL example of AWS's documentation ("Authenticating
    /// Requests: Using Query Parameters", GET test.txt for 86,400 s).
    #[test]
    fn aws_documented_presigned_example() {
        let url = presign(
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            &example_creds(),
            "us-east-1",
            example_time(),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "https://examplebucket.s3.amazonaws.com/test.txt");
        let mut got: Vec<&str> = query.split('&').collect();
        got.sort_unstable();
        let mut want = vec![
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request",
            "X-Amz-Date=20130524T000000Z",
            "X-Amz-Expires=86400",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
        ];
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(
            presign("GET", base, &example_creds(), "us-east-1", example_time(), Duration::from_secs(8 * 86_400))
                .is_err()
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/é+~", true), "a%20b/%C3%A9%2B~");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        let q = vec![("prefix".to_owned(), "x/y".to_owned()), ("list-type".to_owned(), "2".to_owned())];
        assert_eq!(query_string(&q), "list-type=2&prefix=x%2Fy");
    }
}

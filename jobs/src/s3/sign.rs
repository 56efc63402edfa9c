//! AWS Signature Version 4 over request headers, as S3 and Garage check
//! it. The payload is declared `UNSIGNED-PAYLOAD`: hashing every byte with
//! SHA-256 would cost as much CPU as inflating it, and each object (or
//! part) carries its Content-MD5, which the server checks instead.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

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

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // Any key length is valid for HMAC: new_from_slice cannot fail here.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a request is, as far as its signature goes.
pub struct Canonical<'a> {
    pub method: &'a str,
    /// Already percent-encoded, starting with `/`.
    pub path: &'a str,
    /// Unencoded pairs; sorted and encoded here.
    pub query: &'a [(String, String)],
    /// Lower-case names; `host`, `x-amz-date` and `x-amz-content-sha256`
    /// among them.
    pub headers: &'a [(String, String)],
}

/// The canonical query string (also the one sent, so both agree).
pub fn query_string(query: &[(String, String)]) -> String {
    let mut q: Vec<(String, String)> =
        query.iter().map(|(k, v)| (uri_encode(k, false), uri_encode(v, false))).collect();
    q.sort();
    q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The `Authorization` header for `req`, signed at `amz_date`
/// (`yyyymmddThhmmssZ`).
pub fn authorization(req: &Canonical<'_>, amz_date: &str, region: &str, key_id: &str, secret: &str) -> String {
    let mut headers: Vec<(String, String)> =
        req.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())).collect();
    headers.sort();
    let canon_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: String = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let payload =
        headers.iter().find(|(k, _)| k == "x-amz-content-sha256").map_or(UNSIGNED_PAYLOAD, |(_, v)| v.as_str());
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        query_string(req.query),
        canon_headers,
        signed,
        payload
    );
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let k = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let signature = hex(&hmac(&k, &to_sign));
    format!("AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET Object example of AWS's SigV4 documentation ("Example:
    /// GET Object", examplebucket, 20130524), with its published signature.
    #[test]
    fn aws_documented_example() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers = vec![
            ("host".to_owned(), "examplebucket.s3.amazonaws.com".to_owned()),
            ("range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), empty.to_owned()),
            ("x-amz-date".to_owned(), "20130524T000000Z".to_owned()),
        ];
        let req = Canonical { method: "GET", path: "/test.txt", query: &[], headers: &headers };
        let auth = authorization(
            &req,
            "20130524T000000Z",
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
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

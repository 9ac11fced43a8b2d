//! AWS Signature Version 4 verification for the SageMaker-compatible endpoint: the server
//! recomputes the signature of the request with the secret of the access key it names and
//! compares. Pure: the caller passes the request's parts, the keys and `now`.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The request carries no signature at all.
    #[error("the request is not signed (no Authorization header)")]
    Missing,
    #[error("the Authorization header is not AWS4-HMAC-SHA256: {0}")]
    Malformed(String),
    #[error("the access key '{0}' is not known to this coordinator")]
    UnknownKey(String),
    #[error("the request signature does not match: check the secret key and the signing method")]
    BadSignature,
    #[error("the request time {0} is more than 15 minutes from the coordinator's clock")]
    Skewed(String),
    /// `x-amz-content-sha256` is not the SHA-256 of the body that came: the signature covered
    /// another body, or none (`UNSIGNED-PAYLOAD`, which AWS refuses for SageMaker too).
    #[error("x-amz-content-sha256 '{0}' is not the SHA-256 of the request body: the signature must cover the body")]
    PayloadMismatch(String),
}

use trainyard_model::hex::encode as hex;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Seconds since the epoch of an `x-amz-date` (`20261123T213000Z`).
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (num(0..4)?, num(4..6)?, num(6..8)?, num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The access key id a request says it is signed with (to look its secret up before verifying).
pub fn access_key_id(headers: &BTreeMap<String, String>) -> Option<String> {
    let auth = headers.get("authorization")?;
    let credential = auth.split("Credential=").nth(1)?;
    let id = credential.split('/').next()?;
    (!id.is_empty() && id.len() <= 128).then(|| id.to_string())
}

/// Verifies a signed request. `headers` are lower-cased names to values; `keys` maps access key
/// ids to secrets; returns the access key id on success.
pub fn verify(
    method: &str,
    path: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    keys: &BTreeMap<String, String>,
    now_seconds: i64,
) -> Result<String, SigV4Error> {
    let auth = headers.get("authorization").ok_or(SigV4Error::Missing)?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| SigV4Error::Malformed(auth.clone()))?;
    let mut parts = BTreeMap::new();
    for item in rest.split(',') {
        let (k, v) = item.trim().split_once('=').ok_or_else(|| SigV4Error::Malformed(auth.clone()))?;
        parts.insert(k, v);
    }
    let field =
        |k: &str| parts.get(k).copied().ok_or_else(|| SigV4Error::Malformed(format!("no {k} in Authorization")));
    let credential = field("Credential")?;
    let signed_headers = field("SignedHeaders")?;
    let signature = field("Signature")?;
    let mut scope = credential.splitn(2, '/');
    let key_id = scope.next().unwrap_or_default();
    let scope = scope.next().ok_or_else(|| SigV4Error::Malformed("Credential has no scope".into()))?;
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, "aws4_request"] = scope_parts.as_slice() else {
        return Err(SigV4Error::Malformed(format!("bad credential scope {scope}")));
    };
    let secret = keys.get(key_id).ok_or_else(|| SigV4Error::UnknownKey(key_id.to_string()))?;
    let amz_date = headers.get("x-amz-date").ok_or_else(|| SigV4Error::Malformed("no x-amz-date".into()))?;
    let at = parse_amz_date(amz_date).ok_or_else(|| SigV4Error::Malformed(format!("bad x-amz-date {amz_date}")))?;
    if (now_seconds - at).abs() > 15 * 60 {
        return Err(SigV4Error::Skewed(amz_date.clone()));
    }

    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = headers.get(name).map(String::as_str).unwrap_or_default();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    // The hash of the body that came, never the one the client claims: a signature is only worth
    // what it covers.
    let payload_hash = sha256_hex(body);
    if let Some(claimed) = headers.get("x-amz-content-sha256")
        && !claimed.eq_ignore_ascii_case(&payload_hash)
    {
        return Err(SigV4Error::PayloadMismatch(claimed.chars().take(80).collect()));
    }
    let mut query_pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    query_pairs.sort_unstable();
    let canonical_request = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        if path.is_empty() { "/" } else { path },
        query_pairs.join("&")
    );
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date);
    for part in [*region, *service, "aws4_request"] {
        key = hmac(&key, part);
    }
    let expected = hex(&hmac(&key, &string_to_sign));
    // Constant-time comparison: do not leak how much of a forged signature matched.
    let matches = expected.len() == signature.len()
        && expected.bytes().zip(signature.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if matches { Ok(key_id.to_string()) } else { Err(SigV4Error::BadSignature) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example ("get-vanilla" of the SigV4 test suite).
    #[test]
    fn the_aws_test_suite_example_verifies() {
        let headers = BTreeMap::from([
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
            (
                "authorization".to_string(),
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                    .to_string(),
            ),
        ]);
        let keys =
            BTreeMap::from([("AKIDEXAMPLE".to_string(), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string())]);
        let now = parse_amz_date("20150830T123600Z").expect("date");
        assert_eq!(verify("GET", "/", "", &headers, b"", &keys, now), Ok("AKIDEXAMPLE".to_string()));
        assert_eq!(verify("POST", "/", "", &headers, b"", &keys, now), Err(SigV4Error::BadSignature));
        let wrong = BTreeMap::from([("AKIDEXAMPLE".to_string(), "not-the-secret".to_string())]);
        assert_eq!(verify("GET", "/", "", &headers, b"", &wrong, now), Err(SigV4Error::BadSignature));
        assert!(matches!(verify("GET", "/", "", &headers, b"", &BTreeMap::new(), now), Err(SigV4Error::UnknownKey(_))));
        assert!(matches!(verify("GET", "/", "", &headers, b"", &keys, now + 3600), Err(SigV4Error::Skewed(_))));
        assert_eq!(verify("GET", "/", "", &BTreeMap::new(), b"", &keys, now), Err(SigV4Error::Missing));
    }

    /// A POST signed (with the same canonical form as `verify`) over `signed_body`, with the
    /// body's hash in `x-amz-content-sha256` as boto3 sends it.
    fn signed_post(signed_body: &[u8], claimed_hash: &str) -> BTreeMap<String, String> {
        let amz_date = "20261123T213000Z";
        let scope = "20261123/local/sagemaker/aws4_request";
        let canonical_headers = format!("host:trainyard\nx-amz-content-sha256:{claimed_hash}\nx-amz-date:{amz_date}\n");
        let signed_headers = "host;x-amz-content-sha256;x-amz-date";
        let canonical_request =
            format!("POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}", sha256_hex(signed_body));
        let string_to_sign =
            format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
        let mut key = hmac(b"AWS4secret", "20261123");
        for part in ["local", "sagemaker", "aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex(&hmac(&key, &string_to_sign));
        BTreeMap::from([
            ("host".to_string(), "trainyard".to_string()),
            ("x-amz-date".to_string(), amz_date.to_string()),
            ("x-amz-content-sha256".to_string(), claimed_hash.to_string()),
            (
                "authorization".to_string(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=KEY/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
                ),
            ),
        ])
    }

    #[test]
    fn the_signature_covers_the_body_that_came() {
        let keys = BTreeMap::from([("KEY".to_string(), "secret".to_string())]);
        let now = parse_amz_date("20261123T213000Z").expect("date");
        let (a, b): (&[u8], &[u8]) = (br#"{"TrainingJobName":"a"}"#, br#"{"TrainingJobName":"b"}"#);
        let headers = signed_post(a, &sha256_hex(a));
        assert_eq!(verify("POST", "/", "", &headers, a, &keys, now), Ok("KEY".to_string()));
        // Signed for body A, carrying body B: refused, whatever the header claims.
        assert!(matches!(verify("POST", "/", "", &headers, b, &keys, now), Err(SigV4Error::PayloadMismatch(_))));
        // The header changed to B's hash: the signature (over A) no longer matches.
        let mut swapped = headers.clone();
        swapped.insert("x-amz-content-sha256".into(), sha256_hex(b));
        assert_eq!(verify("POST", "/", "", &swapped, b, &keys, now), Err(SigV4Error::BadSignature));
        // An unsigned payload is refused, as AWS refuses it for SageMaker.
        let unsigned = signed_post(a, "UNSIGNED-PAYLOAD");
        assert!(matches!(verify("POST", "/", "", &unsigned, a, &keys, now), Err(SigV4Error::PayloadMismatch(_))));
        // Without the header, the body's own hash is what the signature must cover.
        let mut without = headers.clone();
        without.remove("x-amz-content-sha256");
        assert_eq!(verify("POST", "/", "", &without, b, &keys, now), Err(SigV4Error::BadSignature));
    }

    #[test]
    fn amz_dates_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20261123T213000Z"), Some(1_795_469_400));
        assert_eq!(parse_amz_date("2026-11-23"), None);
    }
}

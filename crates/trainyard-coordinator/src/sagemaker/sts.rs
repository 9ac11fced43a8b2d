//! STS `GetCallerIdentity`, which the SageMaker Python SDK calls to learn the account (for its
//! default bucket's name, its console links): the AWS query protocol (a form-encoded POST, an XML
//! answer), on the SageMaker endpoint, signed the same way. The identity is the Trainyard user the
//! access key acts as, in the account of this cluster's ARNs.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use trainyard_model::access::Caller;
use trainyard_model::names::ArnContext;

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// Whether a request is for STS: a form-encoded body naming an Action.
pub fn is_sts(content_type: &str, body: &[u8]) -> bool {
    content_type.starts_with("application/x-www-form-urlencoded") && field(body, "Action").is_some()
}

/// A field of a form-encoded body (the values STS clients send here need no unescaping).
fn field<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

pub fn handle(arns: &ArnContext, caller: &Caller, body: &[u8]) -> Response {
    match field(body, "Action") {
        Some("GetCallerIdentity") => {
            let user = if caller.user.is_empty() { "trainyard" } else { caller.user.as_str() };
            let arn = format!("arn:{}:iam::{}:user/{}", arns.partition, arns.account, user);
            let xml = format!(
                "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\"><GetCallerIdentityResult><Arn>{}</Arn>\
                 <UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult><ResponseMetadata>\
                 <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
                escape(&arn),
                escape(user),
                escape(&arns.account)
            );
            (StatusCode::OK, [("content-type", "text/xml")], xml).into_response()
        }
        other => {
            let message = format!(
                "{} is not an STS action Trainyard serves (GetCallerIdentity)",
                escape(other.unwrap_or_default())
            );
            let xml = format!(
                "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error><Type>Sender</Type><Code>InvalidAction</Code>\
                 <Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
            );
            (StatusCode::BAD_REQUEST, [("content-type", "text/xml")], xml).into_response()
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_form_bodies_with_an_action_are_sts() {
        assert!(is_sts(
            "application/x-www-form-urlencoded; charset=utf-8",
            b"Action=GetCallerIdentity&Version=2011-06-15"
        ));
        assert!(!is_sts("application/x-amz-json-1.1", b"Action=GetCallerIdentity"));
        assert!(!is_sts("application/x-www-form-urlencoded", b"Version=2011-06-15"));
        assert_eq!(field(b"Version=2011-06-15&Action=GetCallerIdentity", "Action"), Some("GetCallerIdentity"));
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}

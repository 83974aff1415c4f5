//! Webhook delivery: one command `POST`ed as JSON, signed as the Standard Webhooks
//! specification says (`webhook-id`, `webhook-timestamp`, `webhook-signature` with `v1,`
//! and the base64 HMAC-SHA256 of `id.timestamp.body`). It runs outside any turn; the
//! object learns the outcome by a message.

use std::time::Duration;

use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// The signature header's value for a message: `v1,` and the base64 of
/// HMAC-SHA256(`key`, `{id}.{timestamp}.{body}`).
///
/// ```
/// // The specification's example secret, id, timestamp and body.
/// let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD,
///     "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let sig = stead_reactor::sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
///     br#"{"test": 2432232314}"#);
/// assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// ```
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Sends one signed delivery; `Ok` for any 2xx answer, else why not.
pub(crate) async fn send(
    http: &reqwest::Client,
    url: &str,
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), String> {
    let signature = sign(key, id, timestamp, &body);
    let sent = http
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("the endpoint answered {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {} ms", timeout.as_millis())),
        // Without the URL: it may carry credentials, and this text is kept and shown.
        Err(e) => Err(format!(
            "the request failed: {}",
            error_chain(&e.without_url())
        )),
    }
}

/// A webhook URL as it may be shown (in views, dead letters, problems and logs): its user
/// information and its query, which may hold credentials, are masked.
///
/// ```text
/// http://user:pass@hooks.local:8080/in?api_key=k  ->  http://***@hooks.local:8080/in?***
/// ```
pub(crate) fn masked(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return "***".to_owned();
    };
    let userinfo = !u.username().is_empty() || u.password().is_some();
    let query = u.query().is_some();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let mut shown = u.to_string();
    if userinfo {
        shown = shown.replacen("://", "://***@", 1);
    }
    if query {
        shown.push_str("?***");
    }
    shown
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The wait before retry `attempt` (1 after the first failure): `base` doubled per
/// failure up to `max`, then a random point in its upper half (so retries of many
/// entities spread out, and a wait of the full backoff always covers it).
pub(crate) fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let full = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
        .min(max_ms);
    let half = full / 2;
    half + rand::random_range(0..=full - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_webhook_url_are_masked() {
        assert_eq!(
            masked("http://user:pass@hooks.local:8080/in?api_key=k#f"),
            "http://***@hooks.local:8080/in?***"
        );
        assert_eq!(masked("http://hooks.local/in"), "http://hooks.local/in");
        assert_eq!(masked("not a url"), "***");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_in_the_upper_half() {
        for attempt in 1..=12 {
            let full = (1000u64 << (attempt - 1)).min(60_000);
            for _ in 0..50 {
                let b = backoff(attempt, 1000, 60_000);
                assert!(b >= full / 2 && b <= full, "attempt {attempt}: {b}");
            }
        }
        assert!(backoff(200, 1000, 60_000) <= 60_000);
    }
}

//! The API's error answers as lines for standard error: `{"detail": ...}`, field errors
//! (`{"field": ["message", ...]}`) in the answer's order, and any other body cut short.

use serde_json::Value;

use super::{cell, clean};
use crate::client::json;

/// `404 Not Found`.
pub fn status_text(status: u16) -> String {
    match http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// An error answer as lines for standard error: `error: DETAIL (HTTP 404 Not Found)` for
/// `{"detail": ...}`; `error: HTTP 400 Bad Request` and one `  field: message; message` line per
/// field, in the answer's order, for field errors; the status and the start of any other body.
pub fn error(status: u16, retry_after: Option<&str>, body: &str) -> Vec<String> {
    let http = format!("HTTP {}", status_text(status));
    let retry = retry_after.map(|s| format!(", retry after {} s", clean(s))).unwrap_or_default();
    let mut lines = Vec::new();
    let body = body.trim();
    if json::is_json(body) {
        let members = json::members(body);
        if let Some((_, detail)) = members.iter().find(|(k, _)| k == "detail") {
            lines.push(format!("error: {} ({http}{retry})", messages(detail)));
        } else if !members.is_empty() {
            lines.push(format!("error: {http}{retry}"));
            for (field, value) in &members {
                let field = if field == "non_field_errors" { "request".into() } else { clean(field) };
                lines.push(format!("  {field}: {}", messages(value)));
            }
        } else if !json::elements(body).is_empty() {
            lines.push(format!("error: {http}{retry}"));
            lines.extend(json::elements(body).into_iter().map(|m| format!("  {}", messages(m))));
        } else {
            lines.push(format!("error: {http}{retry}: {}", messages(body)));
        }
    } else if body.is_empty() {
        lines.push(format!("error: {http}{retry}"));
    } else {
        let mut text: String = clean(body).chars().take(300).collect();
        if body.chars().count() > 300 {
            text.push_str("...");
        }
        lines.push(format!("error: {http}{retry}: {text}"));
    }
    if status == 401 {
        lines.push("hint: check the token (VPS_API_TOKEN or --token)".into());
    }
    lines
}

/// The messages of one error value: a string, a list of them (joined by `; `), or JSON.
fn messages(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(s)) => clean(&s),
        Ok(Value::Array(items)) => items.iter().map(cell).collect::<Vec<_>>().join("; "),
        Ok(other) => clean(&other.to_string()),
        Err(_) => clean(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shapes_are_readable() {
        assert_eq!(error(404, None, r#"{"detail": "Not found."}"#), ["error: Not found. (HTTP 404 Not Found)"]);
        assert_eq!(
            error(401, None, r#"{"detail":"Invalid token."}"#),
            ["error: Invalid token. (HTTP 401 Unauthorized)", "hint: check the token (VPS_API_TOKEN or --token)"]
        );
        assert_eq!(
            error(429, Some("3"), r#"{"detail": "Request was throttled."}"#),
            ["error: Request was throttled. (HTTP 429 Too Many Requests, retry after 3 s)"]
        );
        // Every field, in the answer's order, each with its messages.
        let body = r#"{"plan_id": ["Invalid pk \"99\" - object does not exist."], "name": ["This field is required.", "Too long."], "location": "bad"}"#;
        assert_eq!(
            error(400, None, body),
            [
                "error: HTTP 400 Bad Request",
                "  plan_id: Invalid pk \"99\" - object does not exist.",
                "  name: This field is required.; Too long.",
                "  location: bad",
            ]
        );
        assert_eq!(error(400, None, r#"["one", "two"]"#), ["error: HTTP 400 Bad Request", "  one", "  two"]);
        assert_eq!(
            error(502, None, "<html>bad gateway</html>"),
            ["error: HTTP 502 Bad Gateway: <html>bad gateway</html>"]
        );
        assert_eq!(error(500, None, ""), ["error: HTTP 500 Internal Server Error"]);
        assert_eq!(error(599, None, "\"x\""), ["error: HTTP 599: x"]);
        assert!(error(503, None, &"x".repeat(1000))[0].ends_with("x..."));
    }
}

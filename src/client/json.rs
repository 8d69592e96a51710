//! The API's JSON text as the gateway wrote it: pretty-printed without reordering or
//! reformatting anything (serde_json's `Value` would sort the keys), and the raw text of an
//! object's members or an array's elements (to join pages, to list field errors in order).
//!
//! Every function here expects text that is valid JSON ([`is_json`] first).

/// Whether `text` is one JSON value.
pub fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// `text` indented by two spaces per level, one member or element per line, `"key": value`;
/// strings, numbers and the order of everything kept exactly.
pub fn pretty(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut i = 0;
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = skip_string(bytes, i);
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                let next = skip_ws(bytes, i + 1);
                if bytes.get(next) == Some(&close) {
                    out.push(open as char);
                    out.push(close as char);
                    i = next + 1;
                    continue;
                }
                out.push(open as char);
                depth += 1;
                newline(&mut out, depth);
            }
            close @ (b'}' | b']') => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(close as char);
            }
            b',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            b':' => out.push_str(": "),
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number, true, false or null: up to the next structural character.
                let end = skip_scalar(bytes, i);
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The members of a top-level object, in order: each key (decoded) and the raw text of its
/// value. Empty when `text` is not an object.
pub fn members(text: &str) -> Vec<(String, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return out;
    }
    i = skip_ws(bytes, i + 1);
    while i < bytes.len() && bytes[i] == b'"' {
        let key_end = skip_string(bytes, i);
        let key = serde_json::from_str::<String>(&text[i..key_end]).unwrap_or_default();
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            break;
        }
        let start = skip_ws(bytes, i + 1);
        let end = skip_value(bytes, start);
        out.push((key, &text[start..end]));
        i = skip_ws(bytes, end);
        if bytes.get(i) == Some(&b',') {
            i = skip_ws(bytes, i + 1);
        }
    }
    out
}

/// The raw text of one member of a top-level object.
pub fn member<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    members(text).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The raw text of each element of a top-level array. Empty when `text` is not an array.
pub fn elements(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'[') {
        return out;
    }
    i = skip_ws(bytes, i + 1);
    while i < bytes.len() && bytes[i] != b']' {
        let end = skip_value(bytes, i);
        if end == i {
            break;
        }
        out.push(&text[i..end]);
        i = skip_ws(bytes, end);
        if bytes.get(i) == Some(&b',') {
            i = skip_ws(bytes, i + 1);
        }
    }
    out
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index just past the string starting at `i` (its opening quote).
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_scalar(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && !matches!(bytes[i], b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r' | b'"') {
        i += 1;
    }
    i
}

/// The index just past the value starting at `i`.
fn skip_value(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i) {
        Some(b'"') => skip_string(bytes, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < bytes.len() {
                match bytes[j] {
                    b'"' => {
                        j = skip_string(bytes, j);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            bytes.len()
        }
        Some(_) => skip_scalar(bytes, i),
        None => i,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{"count":2,"next":null,"previous":"http://h/api/v1/servers/?page=1","results":[{"id":7,"name":"a \"q\" ,:{[","plan":{"id":1,"memory":4096},"tags":[],"o":{}},{"id":8,"n":-1.5e3,"ok":true}]}"#;

    #[test]
    fn pretty_keeps_order_and_text() {
        let p = pretty(PAGE);
        let want = r#"{
  "count": 2,
  "next": null,
  "previous": "http://h/api/v1/servers/?page=1",
  "results": [
    {
      "id": 7,
      "name": "a \"q\" ,:{[",
      "plan": {
        "id": 1,
        "memory": 4096
      },
      "tags": [],
      "o": {}
    },
    {
      "id": 8,
      "n": -1.5e3,
      "ok": true
    }
  ]
}"#;
        assert_eq!(p, want);
        // The same value as the input, and stable.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&p).unwrap(),
            serde_json::from_str::<serde_json::Value>(PAGE).unwrap()
        );
        assert_eq!(pretty(&p), p);
        assert_eq!(pretty(r#"{"detail": "Not found."}"#), "{\n  \"detail\": \"Not found.\"\n}");
        assert_eq!(pretty("[ ]"), "[]");
    }

    #[test]
    fn members_and_elements_are_raw_and_in_order() {
        let m = members(PAGE);
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["count", "next", "previous", "results"]);
        assert_eq!(member(PAGE, "count"), Some("2"));
        assert_eq!(member(PAGE, "next"), Some("null"));
        let results = elements(member(PAGE, "results").unwrap());
        assert_eq!(results.len(), 2);
        assert!(results[0].starts_with(r#"{"id":7,"#) && results[0].ends_with(r#""o":{}}"#), "{}", results[0]);
        assert_eq!(results[1], r#"{"id":8,"n":-1.5e3,"ok":true}"#);
        let spaced = "{ \"z\" : [ \"x\" , 1 ] , \"a\\u0062\" : { } }";
        assert_eq!(members(spaced), [("z".to_string(), "[ \"x\" , 1 ]"), ("ab".to_string(), "{ }")]);
        assert_eq!(elements("[ \"x\" , 1 ]"), ["\"x\"", "1"]);
        assert!(members("[1]").is_empty() && elements("{}").is_empty() && elements("[]").is_empty());
        assert!(is_json(PAGE) && !is_json("{") && !is_json("<html>"));
    }
}

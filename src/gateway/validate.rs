//! Hand validation of JSON bodies, with Django REST Framework's messages. Types are strict:
//! `"1"` is not an integer, `1.5` is not an integer, `"true"` is not a boolean.

use serde_json::{Map, Value};

use super::error::FieldErrors;

pub const REQUIRED: &str = "This field is required.";
pub const NOT_NULL: &str = "This field may not be null.";
pub const NOT_STRING: &str = "Not a valid string.";
pub const BLANK: &str = "This field may not be blank.";
pub const NOT_INTEGER: &str = "A valid integer is required.";
pub const NOT_BOOLEAN: &str = "Must be a valid boolean.";
pub const IMMUTABLE: &str = "This field cannot be changed.";
pub const CONTROL: &str = "This field may not contain control characters or line breaks.";

/// DRF's message for an id that names no object (of the catalog or the account).
pub fn does_not_exist(id: i64) -> String {
    format!("Invalid pk \"{id}\" - object does not exist.")
}

/// Reads fields of a body, collecting every failure.
pub struct Fields<'a> {
    body: &'a Map<String, Value>,
    pub errors: FieldErrors,
}

/// Whether a field is required, and whether `null` means "absent".
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
    /// Optional, and `null` is taken as absent.
    OptionalNullable,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a Map<String, Value>) -> Self {
        Fields { body, errors: FieldErrors::default() }
    }

    pub fn contains(&self, field: &str) -> bool {
        self.body.contains_key(field)
    }

    fn get(&mut self, field: &str, presence: Presence) -> Option<&'a Value> {
        match self.body.get(field) {
            None => {
                if presence == Presence::Required {
                    self.errors.add(field, REQUIRED);
                }
                None
            }
            Some(Value::Null) if presence == Presence::OptionalNullable => None,
            Some(Value::Null) => {
                self.errors.add(field, NOT_NULL);
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A non-blank string of at most `max` characters.
    pub fn string(&mut self, field: &str, presence: Presence, max: usize) -> Option<String> {
        match self.get(field, presence)? {
            Value::String(s) if s.is_empty() => {
                self.errors.add(field, BLANK);
                None
            }
            Value::String(s) if s.chars().count() > max => {
                self.errors.add(field, format!("Ensure this field has no more than {max} characters."));
                None
            }
            // What YAML, a terminal or a log would read as a line break or a command.
            Value::String(s) if s.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')) => {
                self.errors.add(field, CONTROL);
                None
            }
            Value::String(s) => Some(s.clone()),
            _ => {
                self.errors.add(field, NOT_STRING);
                None
            }
        }
    }

    /// A JSON integer (no strings, no fractions).
    pub fn integer(&mut self, field: &str, presence: Presence) -> Option<i64> {
        match self.get(field, presence)? {
            Value::Number(n) if n.is_i64() || n.is_u64() => match n.as_i64() {
                Some(i) => Some(i),
                None => {
                    self.errors.add(field, "Ensure this value is less than or equal to 9223372036854775807.");
                    None
                }
            },
            _ => {
                self.errors.add(field, NOT_INTEGER);
                None
            }
        }
    }

    /// A JSON boolean (no strings, no numbers).
    pub fn boolean(&mut self, field: &str, presence: Presence) -> Option<bool> {
        match self.get(field, presence)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.errors.add(field, NOT_BOOLEAN);
                None
            }
        }
    }

    /// One of `choices` (DRF's ChoiceField: a string, or a value whose text is one).
    pub fn choice(&mut self, field: &str, presence: Presence, choices: &[&'static str]) -> Option<&'static str> {
        let value = self.get(field, presence)?;
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let found = choices.iter().copied().find(|c| *c == text);
        if found.is_none() {
            self.errors.add(field, format!("\"{text}\" is not a valid choice."));
        }
        found
    }

    /// A field that may not be sent here at all.
    pub fn forbid(&mut self, field: &str, message: &str) {
        if self.body.contains_key(field) {
            self.errors.add(field, message);
        }
    }

    /// A server display name: 1–63 letters, digits and hyphens, no hyphen at either end.
    pub fn server_name(&mut self, field: &str, presence: Presence) -> Option<String> {
        let name = self.string(field, presence, 63)?;
        if is_label(&name) {
            Some(name)
        } else {
            self.errors.add(
                field,
                "Enter a valid name: letters, digits and hyphens only, not starting or ending with a hyphen.",
            );
            None
        }
    }

    /// A fully qualified domain name (RFC 1123).
    pub fn hostname(&mut self, field: &str, presence: Presence) -> Option<String> {
        let host = self.string(field, presence, 253)?;
        if is_fqdn(&host) {
            Some(host)
        } else {
            self.errors.add(field, "Enter a valid fully qualified domain name, like web01.example.com.");
            None
        }
    }
}

/// An RFC 1123 label: 1–63 ASCII letters, digits, hyphens, not starting or ending with one.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// At least two labels, at most 253 characters.
pub fn is_fqdn(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn no_string_field_holds_control_characters_or_line_breaks() {
        for bad in ["a\rb", "a\nb", "a\u{85}b", "a\u{2028}b", "a\u{2029}b", "a\u{0}b", "a\tb", "a\u{1b}[31m"] {
            let body = json!({"name": bad});
            let mut f = Fields::new(body.as_object().unwrap());
            assert_eq!(f.string("name", Presence::Required, 100), None, "{bad:?}");
            assert!(f.errors.has("name"));
        }
        let body = json!({"name": "Zürich server – ok"});
        assert!(Fields::new(body.as_object().unwrap()).string("name", Presence::Required, 100).is_some());
    }

    #[test]
    fn strict_types_and_all_errors_at_once() {
        let body = json!({"a": "1", "b": 1.5, "c": "true", "d": null, "e": 7, "f": true, "g": ""});
        let body = body.as_object().unwrap();
        let mut f = Fields::new(body);
        assert_eq!(f.integer("a", Presence::Required), None);
        assert_eq!(f.integer("b", Presence::Required), None);
        assert_eq!(f.boolean("c", Presence::Required), None);
        assert_eq!(f.string("d", Presence::Required, 10), None);
        assert_eq!(f.string("d", Presence::OptionalNullable, 10), None);
        assert_eq!(f.integer("e", Presence::Required), Some(7));
        assert_eq!(f.boolean("f", Presence::Required), Some(true));
        assert_eq!(f.string("g", Presence::Required, 10), None);
        assert_eq!(f.string("missing", Presence::Required, 10), None);
        assert_eq!(f.string("missing2", Presence::Optional, 10), None);
        for field in ["a", "b", "c", "d", "g", "missing"] {
            assert!(f.errors.has(field), "{field}");
        }
        assert!(!f.errors.has("missing2") && !f.errors.has("e"));
    }

    #[test]
    fn names_and_hosts() {
        assert!(is_label("web-server-01"));
        assert!(!is_label("-web") && !is_label("web-") && !is_label("we_b") && !is_label(&"a".repeat(64)));
        assert!(is_fqdn("web01.example.com"));
        assert!(!is_fqdn("localhost") && !is_fqdn("a..b") && !is_fqdn("web01.example.com."));
    }
}

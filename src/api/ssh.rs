//! OpenSSH public keys, parsed rather than matched: a known key type, a base64 body that
//! decodes to a key of that type, and an optional comment of printable ASCII. Only a key
//! that passed [`parse`] ever reaches a guest's `authorized_keys` (through cloud-init), and
//! it goes there re-assembled from its parts ([`PublicKey::line`]).

use base64::Engine as _;

/// The key types OpenSSH accepts in `authorized_keys`.
pub const KEY_TYPES: [&str; 8] = [
    "ssh-rsa",
    "ssh-ed25519",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The longest key line accepted (an RSA 16384-bit key is about 2,800 characters).
pub const MAX_KEY_LENGTH: usize = 16_384;

/// A parsed public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: &'static str,
    /// The base64 body, as given.
    pub body: String,
    pub comment: Option<String>,
}

/// Why a key line is not a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is longer than {MAX_KEY_LENGTH} characters")]
    TooLong,
    #[error("does not start with a known key type")]
    UnknownType,
    #[error("has no key after its type")]
    NoBody,
    #[error("has a key that is not valid base64")]
    NotBase64,
    #[error("has a key of another type than it says")]
    TypeMismatch,
    #[error("has a comment with characters other than printable ASCII")]
    BadComment,
}

/// Parses one `authorized_keys`-style line: `TYPE BODY [COMMENT]`, single spaces or tabs
/// between the parts, leading and trailing blanks ignored.
pub fn parse(line: &str) -> Result<PublicKey, KeyError> {
    if line.len() > MAX_KEY_LENGTH {
        return Err(KeyError::TooLong);
    }
    let line = line.trim_matches([' ', '\t']);
    let mut parts = line.splitn(3, [' ', '\t']);
    let kind = parts.next().unwrap_or_default();
    let kind = KEY_TYPES.iter().copied().find(|t| *t == kind).ok_or(KeyError::UnknownType)?;
    let body = parts.next().filter(|b| !b.is_empty()).ok_or(KeyError::NoBody)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| KeyError::NotBase64)?;
    // The wire format starts with the key type as a length-prefixed string.
    let named = decoded
        .get(..4)
        .map(|n| u32::from_be_bytes(n.try_into().expect("four bytes")) as usize)
        .and_then(|n| decoded.get(4..4 + n));
    if named != Some(kind.as_bytes()) || decoded.len() <= 4 + kind.len() {
        return Err(KeyError::TypeMismatch);
    }
    let comment = parts.next().map(|c| c.trim_matches([' ', '\t'])).filter(|c| !c.is_empty());
    if comment.is_some_and(|c| !c.bytes().all(|b| b == b' ' || b.is_ascii_graphic())) {
        return Err(KeyError::BadComment);
    }
    Ok(PublicKey { kind, body: body.to_string(), comment: comment.map(String::from) })
}

impl PublicKey {
    /// The key as one `authorized_keys` line.
    pub fn line(&self) -> String {
        match &self.comment {
            Some(c) => format!("{} {} {c}", self.kind, self.body),
            None => format!("{} {}", self.kind, self.body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIO0p7bwPPI7HV1DEfAnGyc9CrZz5j2PJ1H1GGFFiD6Vt";

    #[test]
    fn keys_are_parsed_into_their_parts() {
        let key = parse(&format!("ssh-ed25519 {ED25519} me@laptop")).unwrap();
        assert_eq!((key.kind, key.body.as_str(), key.comment.as_deref()), ("ssh-ed25519", ED25519, Some("me@laptop")));
        assert_eq!(key.line(), format!("ssh-ed25519 {ED25519} me@laptop"));
        let bare = parse(&format!("  ssh-ed25519\t{ED25519}  ")).unwrap();
        assert_eq!((bare.line(), bare.comment), (format!("ssh-ed25519 {ED25519}"), None));
        assert_eq!(parse(&format!("ssh-ed25519 {ED25519} two words")).unwrap().comment.as_deref(), Some("two words"));
    }

    #[test]
    fn what_is_not_a_key_is_refused() {
        assert_eq!(parse("ssh-foo AAAA"), Err(KeyError::UnknownType));
        assert_eq!(parse("ssh-ed25519"), Err(KeyError::NoBody));
        assert_eq!(parse("ssh-ed25519 not*base64"), Err(KeyError::NotBase64));
        assert_eq!(parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"), Err(KeyError::NotBase64), "bad padding");
        assert_eq!(parse(&format!("ssh-rsa {ED25519}")), Err(KeyError::TypeMismatch));
        assert_eq!(parse("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"), Err(KeyError::TypeMismatch), "no key after the type");
        assert_eq!(parse(&"a".repeat(MAX_KEY_LENGTH + 1)), Err(KeyError::TooLong));
        // Line breaks of every kind YAML knows, and other control characters, in the comment.
        for bad in ["x\rruncmd: [reboot]", "x\nruncmd", "x\u{85}y", "x\u{2028}y", "x\u{2029}y", "x\u{7}", "é"] {
            assert_eq!(parse(&format!("ssh-ed25519 {ED25519} {bad}")), Err(KeyError::BadComment), "{bad:?}");
        }
    }
}

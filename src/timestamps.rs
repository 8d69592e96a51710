//! Timestamps as both the REST API and Kubernetes' `metav1.Time` write them: RFC 3339 in
//! UTC with a `Z`, to the second.

/// `ts` as `2025-01-10T14:30:00Z`.
pub fn seconds(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now, as [`seconds`] writes it.
pub fn now() -> String {
    seconds(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_with_z_to_the_second() {
        let ts: jiff::Timestamp = "2025-01-10T14:30:00.123+02:00".parse().unwrap();
        assert_eq!(super::seconds(ts), "2025-01-10T12:30:00Z");
    }
}

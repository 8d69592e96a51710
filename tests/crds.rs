//! The checked-in CRD YAML is exactly what the Rust types generate.

#[test]
fn checked_in_crds_match_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/vps.org.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("crds/vps.org.yaml exists");
    let generated = vps_operator::api::crds_yaml();
    assert!(
        checked_in == generated,
        "crds/vps.org.yaml differs from the types; regenerate it with `cargo run -- crdgen > crds/vps.org.yaml`"
    );
}

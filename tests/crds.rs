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

/// `deploy/` and the Helm chart ship exact copies of `crds/vps.org.yaml`.
#[test]
fn deploy_and_chart_crds_are_copies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let crds = read("crds/vps.org.yaml");
    for copy in ["deploy/01-crds.yaml", "charts/vps-operator/crds/vps.org.yaml"] {
        assert!(
            read(copy) == crds,
            "{copy} differs from crds/vps.org.yaml; copy it again: cp crds/vps.org.yaml {copy}"
        );
    }
}

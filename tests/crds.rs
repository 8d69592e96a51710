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

/// `kubectl explain` opens with what each kind is, and short names shorten.
#[test]
fn every_kind_explains_itself_and_its_short_names_are_short() {
    for crd in vps_operator::api::crds() {
        let names = &crd.spec.names;
        let version = &crd.spec.versions[0];
        let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("a schema");
        let description = schema.description.as_deref().unwrap_or_default();
        assert!(
            description.len() > 40 && !description.starts_with("Auto-generated"),
            "{}: {description:?}",
            names.kind
        );
        let singular = names.singular.as_deref().unwrap_or_default();
        for short in names.short_names.iter().flatten() {
            assert!(short.len() < singular.len(), "{}: short name {short} is not shorter than {singular}", names.kind);
        }
    }
}

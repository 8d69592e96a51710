//! kubectl and the API see the same servers.

use super::prelude::*;

#[tokio::test]
async fn kubectl_and_the_api_see_the_same_servers() {
    let (client, g, t) = setup("kubectl", 100_000).await;
    let tok = Some(t.token.as_str());

    // Created with kubectl; the id label stands in for the operator's.
    let id = vps_operator::ids::IdAllocator::new(client.clone(), gw::SYSTEM_NAMESPACE)
        .allocate(vps_operator::ids::IdKind::Server)
        .await
        .unwrap();
    let manifest = format!(
        "apiVersion: vps.org/v1alpha1\nkind: VpsServer\nmetadata:\n  name: db-1\n  namespace: {ns}\n  labels:\n    vps.org/server-id: \"{id}\"\nspec:\n  name: db-server-01\n  plan: performance\n  os: debian-12\n  location: us-east\n  hostname: db01.example.com\n",
        ns = t.namespace
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), manifest).unwrap();
    let (ok, out, err) = support::kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    // And one without an id yet: not listed until the operator gives it one.
    let unlabeled = format!(
        "apiVersion: vps.org/v1alpha1\nkind: VpsServer\nmetadata:\n  name: no-id\n  namespace: {}\nspec:\n  name: pending\n  plan: standard\n  os: debian-12\n  location: us-east\n",
        t.namespace
    );
    std::fs::write(file.path(), unlabeled).unwrap();
    let (ok, out, err) = support::kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{out} {err}");

    eventually("the kubectl server is served", || async {
        g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await.status == 200
    })
    .await;
    let d = g.call("GET", &format!("/api/v1/servers/{id}/"), tok, None).await;
    assert_eq!(d.body["name"], "db-server-01");
    assert_eq!(d.body["plan"]["name"], "Performance VPS");
    assert_eq!(d.body["plan"]["bandwidth"], 4096);
    assert_eq!(d.body["os"], json!({"id": 3, "name": "Debian 12"}));
    assert_eq!(d.body["status"], "provisioning");
    let list = g.call("GET", "/api/v1/servers/", tok, None).await;
    assert_eq!(list.body["count"], 1, "{list:?}");

    // status.id serves when the label is missing.
    let api: Api<VpsServer> = Api::namespaced(client.clone(), &t.namespace);
    api.patch_status("no-id", &PatchParams::default(), &Patch::Merge(&json!({"status": {"id": id + 100000}})))
        .await
        .unwrap();
    eventually("a server with only status.id is served", || async {
        g.call("GET", &format!("/api/v1/servers/{}/", id + 100000), tok, None).await.status == 200
    })
    .await;

    // Created through the API: kubectl shows it.
    let api_id = create(&g, &t, sample_create("from-the-api")).await;
    let (ok, out, err) = support::kubectl(&["get", "vps", "-n", &t.namespace]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with(&format!("srv-{api_id} "))).unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("from-the-api") && line.contains("standard") && line.contains("us-west"), "{line}");
    let (ok, out, _) = support::kubectl(&[
        "get",
        "vps",
        "-n",
        &t.namespace,
        "-l",
        &format!("vps.org/server-id={api_id}"),
        "-o",
        "jsonpath={.items[*].spec.name}",
    ]);
    assert!(ok);
    assert_eq!(out, "from-the-api");
}

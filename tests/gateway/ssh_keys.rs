//! SSH keys: created, used by a server, deleted.

use super::prelude::*;

#[tokio::test]
async fn ssh_keys_are_created_used_and_deleted() {
    let (client, g, t) = setup("catalog", 100_000).await;
    let tok = Some(t.token.as_str());
    // SSH keys.
    let public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";
    let a = g.call("POST", "/api/v1/ssh-keys/", tok, Some(json!({"name": "laptop", "public_key": public_key}))).await;
    assert_eq!(a.status, 201, "{a:?}");
    let key_id = a.body["id"].as_i64().unwrap();
    assert_eq!((&a.body["name"], &a.body["public_key"]), (&json!("laptop"), &json!(public_key)));
    assert_eq!(a.header("location"), Some(format!("{}/api/v1/ssh-keys/{key_id}/", g.url).as_str()));
    let list = g.call("GET", "/api/v1/ssh-keys/", tok, None).await;
    assert_eq!((list.body["count"].as_i64(), &list.body["results"][0]["id"]), (Some(1), &json!(key_id)));
    assert_eq!(g.call("GET", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.body["name"], "laptop");

    let mut body = sample_create("with-key");
    body["ssh_key_id"] = json!(key_id);
    let id = create(&g, &t, body).await;
    let obj = Api::<VpsServer>::namespaced(client.clone(), &t.namespace).get(&format!("srv-{id}")).await.unwrap();
    assert_eq!(obj.spec.ssh_key, Some(format!("key-{key_id}")));

    assert_eq!(g.call("DELETE", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.status, 204);
    assert_eq!(g.call("GET", &format!("/api/v1/ssh-keys/{key_id}/"), tok, None).await.status, 404);
    assert_eq!(g.call("GET", "/api/v1/ssh-keys/", tok, None).await.body["count"], 0);

    // Another tenant cannot use a key of this one.
    let key = g.call("POST", "/api/v1/ssh-keys/", tok, Some(json!({"name": "k", "public_key": public_key}))).await;
    let other = gw::tenant(&client, "ssh-keys-other", 100_000).await;
    g.wait_token(&other.token).await;
    let mut body = sample_create("theirs");
    body["ssh_key_id"] = key.body["id"].clone();
    let r = g.call("POST", "/api/v1/servers/", Some(&other.token), Some(body)).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body["ssh_key_id"].is_array(), "{r:?}");
    assert_eq!(
        g.call("GET", &format!("/api/v1/ssh-keys/{}/", key.body["id"]), Some(&other.token), None).await.status,
        404
    );
}

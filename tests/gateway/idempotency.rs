//! `Idempotency-Key`: records in the cluster replay the first answer.

use super::prelude::*;

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let (client, g, t) = setup("idempotency", 1_000_000).await;
    let tok = Some(t.token.as_str());
    let body = serde_json::to_vec(&sample_create("idem")).unwrap();
    let key = format!("key-{}", t.namespace);
    let first = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!((again.status, &again.body), (201, &first.body));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));

    // Another gateway (a restart, a replica) replays it too.
    let other = gw::start(&client).await;
    let replay = other.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", &key)]).await;
    assert_eq!((replay.status, &replay.body["id"]), (201, &first.body["id"]));
    drop(other);

    // The same key with another body is refused; another key creates another server.
    let changed = serde_json::to_vec(&sample_create("changed")).unwrap();
    assert_eq!(g.raw("POST", "/api/v1/servers/", tok, changed, &[("Idempotency-Key", &key)]).await.status, 400);
    let second = g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", "another")]).await;
    assert_eq!(second.status, 201);
    assert_ne!(second.body["id"], first.body["id"]);

    // Concurrent requests with one key: one server, one answer.
    let concurrent = format!("concurrent-{}", t.namespace);
    let header = [("Idempotency-Key", concurrent.as_str())];
    let results =
        futures::future::join_all((0..5).map(|_| g.raw("POST", "/api/v1/servers/", tok, body.clone(), &header))).await;
    let ids: BTreeSet<String> = results
        .iter()
        .map(|a| {
            assert_eq!(a.status, 201, "{a:?}");
            a.body["id"].to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{results:?}");

    // A failed request does not use up its key.
    let bad = serde_json::to_vec(&json!({"name": "x"})).unwrap();
    assert_eq!(g.raw("POST", "/api/v1/servers/", tok, bad, &[("Idempotency-Key", "retry-me")]).await.status, 400);
    assert_eq!(
        g.raw("POST", "/api/v1/servers/", tok, body.clone(), &[("Idempotency-Key", "retry-me")]).await.status,
        201
    );

    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 4, "first, another, concurrent, retry-me");
    assert_eq!(g.call("GET", "/api/v1/servers/", tok, None).await.body["count"], 4);

    // Keys are per account: another tenant's same key is its own.
    let other_tenant = gw::tenant(&client, "idempotency-other", 1_000_000).await;
    g.wait_token(&other_tenant.token).await;
    let theirs = g.raw("POST", "/api/v1/servers/", Some(&other_tenant.token), body, &[("Idempotency-Key", &key)]).await;
    assert_eq!(theirs.status, 201);
    assert_ne!(theirs.body["id"], first.body["id"]);
}

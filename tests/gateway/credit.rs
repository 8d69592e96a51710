//! Credit: creates that would overspend an account are refused, also when they race.

use super::prelude::*;

#[tokio::test]
async fn credit_limits_creates() {
    // Standard costs 1000, Performance 4000 cents a month.
    let (client, g, t) = setup("credit", 2500).await;
    let tok = Some(t.token.as_str());
    let first = create(&g, &t, sample_create("one")).await;
    create(&g, &t, sample_create("two")).await;
    let a = g.call("POST", "/api/v1/servers/", tok, Some(sample_create("three"))).await;
    assert_eq!(a.status, 402, "{a:?}");
    assert_eq!(keys(&a.body), ["detail".to_string()].into());
    let mut perf = sample_create("perf");
    perf["plan_id"] = json!(2);
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(perf)).await.status, 402);
    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 2, "nothing was created");
    // Deleting one frees its share.
    assert_eq!(g.call("DELETE", &format!("/api/v1/servers/{first}/"), tok, None).await.status, 204);
    create(&g, &t, sample_create("three")).await;
}

#[tokio::test]
async fn concurrent_creates_never_overspend() {
    // Room for exactly five Standard servers (1000 cents each); eight creates race.
    let (client, g, t) = setup("credit-race", 5500).await;
    let tok = Some(t.token.as_str());
    let calls = (0..8).map(|i| g.call("POST", "/api/v1/servers/", tok, Some(sample_create(&format!("race-{i}")))));
    let mut statuses: Vec<u16> = futures::future::join_all(calls).await.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 402, 402, 402]);
    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 5);
}

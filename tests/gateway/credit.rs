//! Credit: one ledger per account in the cluster; creates that would overspend an account are
//! refused, also when they race on several gateways, and a server counts until its teardown
//! has finished.

use super::prelude::*;
use vps_operator::credit_ledger::Ledger;

#[tokio::test]
async fn credit_limits_creates_until_a_teardown_has_finished() {
    // Standard costs 1000, Performance 2000 cents a month.
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
    let servers = Api::<VpsServer>::namespaced(client.clone(), &t.namespace);
    assert_eq!(servers.list(&ListParams::default()).await.unwrap().items.len(), 2, "nothing was created");
    // A server being deleted still counts: its VM and disk live until the teardown is done
    // (no operator runs in this suite, so the teardown never ends by itself).
    assert_eq!(g.call("DELETE", &format!("/api/v1/servers/{first}/"), tok, None).await.status, 204);
    assert_eq!(g.call("POST", "/api/v1/servers/", tok, Some(sample_create("three"))).await.status, 402);
    // Once the operator has torn it down, its commitment ends and there is room again.
    Ledger::new(client.clone(), gw::SYSTEM_NAMESPACE).release(&t.account, &format!("srv-{first}")).await.unwrap();
    create(&g, &t, sample_create("three")).await;
}

#[tokio::test]
async fn concurrent_creates_on_two_gateways_never_overspend() {
    // Room for exactly five Standard servers (1000 cents each); twelve creates race on two
    // gateways, each with caches and memory of its own.
    let (client, g1, t) = setup("credit-race", 5500).await;
    let g2 = gw::start(&client).await;
    g2.wait_token(&t.token).await;
    let tok = Some(t.token.as_str());
    let calls = (0..12).map(|i| {
        let g = if i % 2 == 0 { &g1 } else { &g2 };
        g.call("POST", "/api/v1/servers/", tok, Some(sample_create(&format!("race-{i}"))))
    });
    let mut statuses: Vec<u16> = futures::future::join_all(calls).await.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 201, 201, 402, 402, 402, 402, 402, 402, 402]);
    let servers =
        Api::<VpsServer>::namespaced(client.clone(), &t.namespace).list(&ListParams::default()).await.unwrap();
    assert_eq!(servers.items.len(), 5);
}

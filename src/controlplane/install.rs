//! Installing objects into a cluster: CRDs (server-side apply, then wait until Established)
//! and arbitrary YAML manifests.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize;

const FIELD_MANAGER: &str = "vps-operator-install";

/// Server-side applies the CRDs and waits until each is Established.
pub async fn apply_crds(client: &Client, crds: &[CustomResourceDefinition]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crds {
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        crd.metadata.resource_version = None;
        crd.status = None;
        api.patch(&crd.name_any(), &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply CRD {}", crd.name_any()))?;
    }
    for crd in crds {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .with_context(|| format!("CRD {name} not Established within 60 s"))??;
    }
    Ok(())
}

/// Server-side applies every document of a YAML stream (CRDs are waited for until
/// Established). Namespaced objects without a namespace go to `default_namespace`.
pub async fn apply_yaml(client: &Client, yaml: &str, default_namespace: &str) -> Result<()> {
    let mut crds = Vec::new();
    let mut others = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_yaml::from_value(value)?;
        let types = object.types.clone().context("a document without apiVersion/kind")?;
        if types.kind == "CustomResourceDefinition" {
            crds.push(serde_json::from_value(serde_json::to_value(&object)?)?);
        } else {
            others.push(object);
        }
    }
    apply_crds(client, &crds).await?;
    if others.is_empty() {
        return Ok(());
    }
    // Only the groups needed: an aggregated API that does not answer (virt-api's, registered
    // for a virt-api of an earlier run) would fail a discovery of everything.
    let mut groups: Vec<String> = others
        .iter()
        .filter_map(|o| o.types.as_ref())
        .map(|t| t.api_version.split_once('/').map_or(String::new(), |(g, _)| g.to_string()))
        .collect();
    groups.sort();
    groups.dedup();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let discovery = Discovery::new(client.clone()).filter(&groups).run().await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for object in others {
        let types = object.types.clone().expect("checked above");
        let (group, version) = match types.api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), types.api_version.clone()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
        let Some((resource, caps)) = discovery.resolve_gvk(&gvk) else {
            bail!("the cluster does not serve {}/{}", types.api_version, types.kind);
        };
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = object.namespace().unwrap_or_else(|| default_namespace.to_string());
            Api::namespaced_with(client.clone(), &ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(&object.name_any(), &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("apply {} {}", types.kind, object.name_any()))?;
    }
    Ok(())
}

/// Waits until kube-controller-manager has given `namespace` its `default` ServiceAccount
/// (Pods cannot be created there before).
pub async fn wait_for_default_service_account(client: &Client, namespace: &str) -> Result<()> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    for _ in 0..600 {
        if api.get_opt("default").await?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("namespace {namespace} got no default ServiceAccount within 60 s (is kube-controller-manager running?)")
}

/// Creates the namespace if it does not exist.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&ns)).await?;
    Ok(())
}

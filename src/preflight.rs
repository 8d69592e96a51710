//! Start-up checks against the cluster: a part exits with a message that says what to
//! install when a kind it needs is not served (no part installs CRDs itself).

use std::fmt::Debug;

use anyhow::{Context, Result, bail};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// Fails unless the cluster serves `K`; `install` says what provides it.
pub async fn require_kind<K>(client: &Client, install: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&());
    match Api::<K>::all(client.clone()).list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => bail!("the cluster does not serve {kind}: {install}"),
        Err(e) => Err(e).with_context(|| format!("list {kind} objects")),
    }
}

/// The vps.org CRDs.
pub async fn require_vps_crds(client: &Client) -> Result<()> {
    require_kind::<crate::api::VpsServer>(client, "apply crds/vps.org.yaml first").await
}

/// KubeVirt's VirtualMachine CRD.
pub async fn require_kubevirt(client: &Client) -> Result<()> {
    require_kind::<crate::kubevirt::VirtualMachineView>(client, "is KubeVirt installed?").await
}

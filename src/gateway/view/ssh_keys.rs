//! The REST view of an account's SSH keys.

use kube::ResourceExt;
use serde::Serialize;
use utoipa::ToSchema;

use super::created_at;
use crate::api::{SSH_KEY_ID_LABEL, VpsSshKey};

/// An SSH key of the account.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct SshKeyView {
    pub id: i64,
    pub name: String,
    pub public_key: String,
    pub created_at: Option<String>,
}

/// The key's integer id, from its label.
pub fn ssh_key_id(k: &VpsSshKey) -> Option<i64> {
    k.labels().get(SSH_KEY_ID_LABEL).and_then(|v| v.parse().ok())
}

pub fn ssh_key_view(k: &VpsSshKey) -> Option<SshKeyView> {
    Some(SshKeyView {
        id: ssh_key_id(k)?,
        name: k.spec.name.clone(),
        public_key: k.spec.public_key.clone(),
        created_at: created_at(k),
    })
}

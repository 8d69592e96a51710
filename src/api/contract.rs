//! The names the parts of the system agree on: the labels, annotations, finalizer and field
//! managers that the gateway, the operator and the node simulator read from each other's
//! objects. Kept here, in the one module all three import, so that none imports another.

/// Label holding a server's integer id (set by whoever creates it, or by the operator).
pub const SERVER_ID_LABEL: &str = "vps.org/server-id";
/// Label holding an SSH key's integer id.
pub const SSH_KEY_ID_LABEL: &str = "vps.org/ssh-key-id";
/// Label naming the account that owns an object.
pub const ACCOUNT_LABEL: &str = "vps.org/account";
/// Label on a server's VirtualMachine, its instance, its disks and its snapshots: the name
/// of the `VpsServer`.
pub const SERVER_LABEL: &str = "vps.org/server";

/// Label holding a backup's (a VirtualMachineSnapshot's) integer id.
pub const BACKUP_ID_LABEL: &str = "vps.org/backup-id";
/// Label saying how a backup came to be: `scheduled` or `on-demand`.
pub const BACKUP_KIND_LABEL: &str = "vps.org/backup-kind";
/// Annotation on a ready backup: the bytes a disk restored from it needs (the sum of its
/// VolumeSnapshots' `restoreSize`), written once by the operator.
pub const BACKUP_SIZE_ANNOTATION: &str = "vps.org/backup-size";
/// Annotation on an on-demand backup: the `spec.backupRequestedAt` it answers.
pub const BACKUP_REQUEST_ANNOTATION: &str = "vps.org/backup-request";

/// Label on a `VpsAddress`: the location code whose pools it is from.
pub const LOCATION_LABEL: &str = "vps.org/location";
/// Label on a `VpsAddress`: the UID of the server holding it.
pub const SERVER_UID_LABEL: &str = "vps.org/server-uid";

/// The finalizer that guarantees the teardown of a server's VM, disks and snapshots. The
/// gateway creates servers with it in place; the operator adds it to servers made with
/// kubectl and removes it once everything is gone.
pub const TEARDOWN_FINALIZER: &str = "vps.org/teardown";

/// Server annotations with this prefix are meant for the node simulator (failure
/// injection); the operator copies them onto the server's VirtualMachine.
pub const SIMULATOR_ANNOTATION_PREFIX: &str = "simulator.vps.org/";
/// The failure-injection annotation: `image-pull`, `data-volume`, `snapshot`, `crash`,
/// `shutdown-hang` (a guest that ignores the shutdown request) or `reboot-fails` (virt-handler
/// cannot reach the instance for a soft reboot or reset).
pub const FAILURE_ANNOTATION: &str = "simulator.vps.org/fail";
/// On a CDI DataSource: the folder of a real image (`disk.img`, `vmlinuz`, `initrd.img`, from
/// `scripts/build-guest-image.sh`) whose servers the node simulator boots in qemu.
pub const GUEST_IMAGE_ANNOTATION: &str = "simulator.vps.org/guest-image";
/// On a real guest's instance: where the node simulator forwards its SSH port (`127.0.0.1:PORT`).
pub const GUEST_SSH_ANNOTATION: &str = "simulator.vps.org/ssh";

/// Field manager of the operator's writes.
pub const OPERATOR_MANAGER: &str = "vps-operator";
/// Field manager of the gateway's writes.
pub const GATEWAY_MANAGER: &str = "vps-gateway";
/// Field manager of the node simulator's writes.
pub const SIMULATOR_MANAGER: &str = "vps-node-simulator";

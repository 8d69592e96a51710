//! The commands and flags of `vps-operator client` (clap), as the user types them; what each
//! one does is planned in the sibling module `plan`.

use std::path::PathBuf;
use std::time::Duration;

/// Flags of `vps-operator client`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
The URL and token are those `vps-operator local --env-file FILE` writes; `set -a; . FILE; set +a`
exports them. https:// URLs are verified against the system's CA certificates (SSL_CERT_FILE or
SSL_CERT_DIR override them). The exit code is 0 on success and 1 on any error: an error answer of
the API (printed with its HTTP status), no answer, or a --wait that timed out or settled elsewhere.")]
pub struct ClientArgs {
    /// The gateway's root URL (`http://127.0.0.1:8080`); requests go to its /api/v1/...
    #[arg(long, env = "VPS_API_URL", global = true, value_name = "URL", help_heading = "Client options")]
    pub api_url: Option<String>,
    /// The account's API token (sent as `Authorization: Bearer TOKEN`).
    #[arg(
        long,
        env = "VPS_API_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN",
        help_heading = "Client options"
    )]
    pub token: Option<String>,
    /// How answers are shown: tables, or the API's JSON answer as it came (pretty-printed).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true, help_heading = "Client options")]
    pub output: Output,
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// How answers are shown.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// The account's servers: list, show, create, update, delete, start, stop, reboot, resize,
    /// rebuild.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// The plans a server can be made with (every page).
    Plans,
    /// The OS images a server can be made with (every page).
    Os,
    /// The locations a server can be made in (every page).
    Locations,
    /// The account's SSH keys: list, show, create, delete.
    #[command(subcommand)]
    SshKeys(SshKeysCommand),
    /// One tracked action (`servers actions ID` lists a server's).
    Action {
        #[arg(value_name = "ID")]
        id: u64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ServersCommand {
    /// List the servers: ID, NAME, STATUS, PLAN, LOCATION, IP (one page unless --all).
    List(ListArgs),
    /// Show one server in detail.
    Get {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Create (deploy) a server.
    Create(CreateArgs),
    /// Change a server's name, hostname or backups (only the fields given are sent, a PATCH).
    Update(UpdateArgs),
    /// Delete a server permanently.
    Delete(PowerArgs),
    /// Start a stopped server.
    Start(PowerArgs),
    /// Shut a running server down gracefully (`--force`: at once, not waiting for the guest).
    Stop(StopArgs),
    /// Restart a running server in place: the guest is asked to reboot (`--hard`: a reset).
    Reboot(RebootArgs),
    /// Give a stopped server another plan (disks only grow); CPU and memory follow at the next start.
    Resize(ResizeArgs),
    /// A server's tracked actions, newest first (every page).
    Actions {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// A server's backups, newest first (every page).
    Backups {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Take a backup of a server now.
    Backup {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Delete one of a server's backups.
    DeleteBackup {
        #[arg(value_name = "ID")]
        id: u64,
        #[arg(value_name = "BACKUP_ID")]
        backup_id: u64,
    },
    /// Replace a server's disk by a fresh copy of an image (cloud-init runs again); id, name,
    /// plan and backups are kept.
    Rebuild(RebuildArgs),
    /// Restore a server's disk from one of its backups (it is stopped first, and runs again
    /// if it was running).
    Restore {
        #[arg(value_name = "ID")]
        id: u64,
        #[arg(value_name = "BACKUP_ID")]
        backup_id: i64,
    },
}

#[derive(clap::Args, Debug)]
pub struct RebuildArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    /// The image's id (`client os`).
    #[arg(long)]
    pub os_id: i64,
    /// An SSH key of the account for the new disk (`client ssh-keys list`); without it the
    /// server keeps its key.
    #[arg(long, conflicts_with = "no_ssh_key")]
    pub ssh_key_id: Option<i64>,
    /// No SSH key on the new disk.
    #[arg(long)]
    pub no_ssh_key: bool,
}

#[derive(clap::Args, Debug)]
pub struct ResizeArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    /// The new plan's id (`client plans`).
    #[arg(long)]
    pub plan_id: i64,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only servers with this status (provisioning, active, starting, stopping, stopped,
    /// rebooting, rebuilding, suspended, error).
    #[arg(long)]
    pub status: Option<String>,
    /// Only servers in this location (a code such as us-west).
    #[arg(long)]
    pub location: Option<String>,
    /// The page to show (1-based).
    #[arg(long, conflicts_with = "all")]
    pub page: Option<u32>,
    /// Servers per page (the API's default 100, at most 1000).
    #[arg(long)]
    pub page_size: Option<u32>,
    /// Follow `next` through every page (1000 per request unless --page-size); with -o json,
    /// one page object holding every result.
    #[arg(long)]
    pub all: bool,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// 1–63 letters, digits and hyphens, not starting or ending with a hyphen.
    #[arg(long, allow_hyphen_values = true)]
    pub name: String,
    /// A plan's id (`client plans`).
    #[arg(long)]
    pub plan_id: i64,
    /// An OS image's id (`client os`).
    #[arg(long)]
    pub os_id: i64,
    /// A location's code (`client locations`).
    #[arg(long)]
    pub location: String,
    /// A fully qualified domain name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// One of the account's SSH keys (`client ssh-keys list`).
    #[arg(long)]
    pub ssh_key_id: Option<i64>,
    /// Enable backups (`--backups` or `--backups=false`; the API's default is off).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub backups: Option<bool>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    /// A new name.
    #[arg(long, allow_hyphen_values = true)]
    pub name: Option<String>,
    /// A new hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Backups on or off (`--backups`, `--backups=false`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub backups: Option<bool>,
}

#[derive(clap::Args, Debug)]
pub struct PowerArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    /// A forced stop (also of a server already stopping): the guest is not waited for.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(clap::Args, Debug)]
pub struct RebootArgs {
    #[arg(value_name = "ID")]
    pub id: u64,
    /// A hard reboot: the machine is reset, the guest is not asked.
    #[arg(long)]
    pub hard: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Follow the server (a GET every second, progress on stderr) until it is active, stopped,
    /// suspended or in error (deleted: until it answers 404), then show it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = crate::flags::duration, default_value = "10m", value_name = "DURATION")]
    pub wait_timeout: Duration,
}

#[derive(clap::Subcommand, Debug)]
pub enum SshKeysCommand {
    /// List the account's SSH keys (every page).
    List,
    /// Show one key.
    Get {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Add a public key.
    Create {
        /// 1–128 characters.
        #[arg(long)]
        name: String,
        /// The key, one OpenSSH line (`ssh-ed25519 AAAA... user@host`).
        #[arg(long, required_unless_present = "public_key_file", conflicts_with = "public_key_file")]
        public_key: Option<String>,
        /// A file holding the key (`~/.ssh/id_ed25519.pub`).
        #[arg(long, value_name = "FILE")]
        public_key_file: Option<PathBuf>,
    },
    /// Delete a key (servers made with it keep it).
    Delete {
        #[arg(value_name = "ID")]
        id: u64,
    },
}

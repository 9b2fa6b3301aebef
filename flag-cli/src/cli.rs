//! The command line: global options and one subcommand enum per noun.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// flagctl: manage feature flags on a flagd-rs server.
///
/// Create, toggle, target and roll out flags, promote them between environments, audit their
/// history, and keep them as code (export, diff, apply).
///
/// The server and token come from --server/--token, else FLAGCTL_SERVER/FLAGCTL_TOKEN, else the
/// config file `flagctl login` writes ($XDG_CONFIG_HOME/flagctl/config.toml).
///
/// In CI, flagctl can authenticate with the platform's OIDC ID token instead of a stored token
/// (the server must trust the issuer: flagd-server --oidc-config): set FLAGCTL_OIDC_AUDIENCE to
/// the audience the server expects, and flagctl requests an ID token where the platform offers
/// the standard request endpoint (ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN,
/// as GitHub Actions does with `permissions: id-token: write`), or reads one from
/// FLAGCTL_OIDC_TOKEN_FILE. --token / FLAGCTL_TOKEN, when given, takes precedence.
///
/// Exit codes: 0 success (also when whoever reads stdout stops early, as `| head` does); 1 an
/// error from the server, the input or the network (the message names what and where); 2 a
/// usage error; 3 `flagctl diff` found differences, or `flagctl refs` or `flagctl stale` found
/// something to act on.
#[derive(Debug, Parser)]
#[command(name = "flagctl", version, term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The flag server, e.g. http://127.0.0.1:8016. For `watch`, a comma-separated list of
    /// replicas to fail over between (other commands use the first).
    #[arg(long, env = "FLAGCTL_SERVER", hide_env_values = true, global = true)]
    pub server: Option<String>,

    /// The credential: an admin token (or an sdk token, for what one may read, or an OIDC ID
    /// token; see FLAGCTL_OIDC_AUDIENCE above). Prefer the environment variable: arguments are
    /// visible to other users.
    #[arg(long, env = "FLAGCTL_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    /// A CA certificate (PEM file) to trust for an https:// server, besides the public roots:
    /// for servers with a private CA. `flagctl login --ca-cert FILE` saves it.
    #[arg(long, env = "FLAGCTL_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// A client certificate (PEM file) to present to a server that requires one (mutual TLS).
    /// Needs --client-key. `flagctl login` saves both.
    #[arg(
        long,
        env = "FLAGCTL_CLIENT_CERT",
        global = true,
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The private key (PEM file) of --client-cert.
    #[arg(
        long,
        env = "FLAGCTL_CLIENT_KEY",
        global = true,
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// The environment to work in.
    #[arg(
        short = 'e',
        long = "env",
        env = "FLAGCTL_ENV",
        hide_env_values = true,
        global = true
    )]
    pub environment: Option<String>,

    /// Output: a table for people, or JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,

    /// Treat warnings as errors: writes send `?strict=true` (the server refuses them with 422),
    /// and `validate`, `diff`, `apply` and `eval --file` fail (exit 1) on a file with warnings.
    /// Warnings are what flagd loads but handles at evaluation time (docs/COMPATIBILITY.md).
    #[arg(
        long,
        env = "FLAGCTL_STRICT",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub strict: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Save --server, --token and --ca-cert (checked first) to the config file, readable only by you.
    Login,
    /// List, create and delete environments.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Create, inspect, toggle, target, roll out and delete flags.
    #[command(subcommand)]
    Flag(FlagCommand),
    /// Print the environment as one flagd document (flags as code).
    Export,
    /// Check a flagd file as the server would, offline (exit 0 valid, 1 not): every error and
    /// warning with its path and code.
    Validate(ValidateArgs),
    /// Show what applying a flagd file would change (exit code 3 when anything would).
    Diff(DiffArgs),
    /// Make the environment match a flagd file: create, update and (with --prune) delete flags.
    Apply(ApplyArgs),
    /// Copy a flag's definition from one environment to another.
    ///
    /// --if-match names the flag's version in the --to environment (0: it must not exist there
    /// yet), as `flagctl -e TO flag get KEY` shows it.
    Promote(PromoteArgs),
    /// Evaluate a flag for a context: on the server (OFREP), or locally from a file.
    Eval(EvalArgs),
    /// Print changes to the environment as they happen, until interrupted.
    ///
    /// One line per flag created, updated (with what changed) or deleted, and one line when the
    /// flag set's shared settings (metadata, $evaluators) are replaced. With -o json, one object
    /// per line: {"time", "version", "key", "action", "changes"} for a flag, {"time", "version",
    /// "type": "settings", "changes"} for settings.
    Watch,
    /// Show the environment's version, its Git source with its last sync and drift (when it is
    /// bound to one), and its connected SDK clients.
    Status,
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Who the server takes your credential for.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Ramp a flag's rollout up in steps on a schedule (progressive delivery).
    #[command(subcommand)]
    Ramp(RampCommand),
    /// Find the environment's flags in a source tree: each flag's references (file:line), flags
    /// with none left (candidates for removal), and string literals passed to flag getters that
    /// name no flag (typos).
    ///
    /// A reference is a flag key as a whole string literal ("key", 'key' or `key`) in any text
    /// file; .gitignore, .ignore and hidden files are respected, binary files and flag documents
    /// (JSON with "flags" and "defaultVariant") skipped. Getters are the OpenFeature SDKs'
    /// (getBooleanValue, get_string_details, BooleanValue(ctx, "key", …), …), this project's SDK
    /// (bool_value, string_details, .flag("key")) and any --getter. Exit 3 when anything was
    /// found, so CI can gate on it; -o json for scripts.
    Refs(RefsArgs),
    /// List flags that have done their job: never evaluated since they were created, not
    /// evaluated for --days, serving one variant to everyone (fully rolled out or off) or
    /// disabled, unchanged for --days. Each with a suggested action.
    ///
    /// Evaluations come from the server's telemetry (OFREP, and what SDKs report; kept for the
    /// server's --usage-retention, 90 days by default). A flag younger than --days is never
    /// stale. Exit 3 when any flag is, so CI can gate on it; -o json for scripts.
    Stale(StaleArgs),
}

#[derive(Debug, Args)]
pub struct StaleArgs {
    /// The period, in days (0 to 3650).
    #[arg(long, default_value = "30", value_parser = crate::commands::stale::parse_days)]
    pub days: u32,
    /// The environment to look at (the same as -e/--env).
    #[arg(long, value_name = "ENV")]
    pub environment: Option<String>,
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    /// The source tree to scan.
    #[arg(default_value = ".")]
    pub path: Option<PathBuf>,
    /// The environment whose flags to look for (the same as -e/--env).
    #[arg(long, value_name = "ENV", conflicts_with = "file")]
    pub environment: Option<String>,
    /// Take the flag keys from a flagd file instead of the server's environment (offline).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Skip paths matching this glob, relative to PATH (repeatable), e.g. 'vendor/**'.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Also treat calls to this function or method as flag getters (repeatable), e.g. isEnabled.
    #[arg(long, value_name = "NAME")]
    pub getter: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RampCommand {
    /// Start a ramp: the first step applies now, then one step per interval, run by the server.
    Start(Box<RampStartArgs>),
    /// Show a flag's ramp: current %, next step and when, progress, history.
    Status {
        /// The flag key.
        key: String,
    },
    /// Pause a ramp (manual rollout edits are allowed while it is paused).
    Pause {
        /// The flag key.
        key: String,
        /// Why: recorded in the ramp's history.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// Resume a paused ramp; the interval restarts now.
    Resume {
        /// The flag key.
        key: String,
        /// Why: recorded in the ramp's history.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// Abort a ramp and restore the rollout from before it.
    Abort {
        /// The flag key.
        key: String,
        /// Why: recorded in the ramp's history and the audit log.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// List the environment's ramps, newest first.
    List,
    /// Run one Prometheus measurement now, on the server, as a metric guard would take it: try a
    /// query and its success condition before a ramp relies on them. Prints the query as sent
    /// (placeholders filled), the values and the verdict (success, failure or inconclusive, with
    /// the reason). Exit 0 whatever the verdict; 1 when the request is refused.
    Analyse(RampAnalyseArgs),
}

#[derive(Debug, Args)]
pub struct RampAnalyseArgs {
    /// The flag key (for `{{flag}}`; the flag must exist).
    pub key: String,
    /// Prometheus's base URL, as the server reaches it, e.g. http://prometheus:9090.
    #[arg(long, value_name = "URL")]
    pub prometheus: String,
    /// The PromQL query (an instant query; a scalar or an instant vector). May use {{flag}},
    /// {{environment}} and {{variant}}.
    #[arg(long)]
    pub query: String,
    /// The success condition on each value: comparisons of `result` and numbers, and/or/not,
    /// isNaN(result), e.g. 'result < 0.02'.
    #[arg(long)]
    pub success: String,
    /// What {{variant}} stands for.
    #[arg(long)]
    pub variant: Option<String>,
    /// How long Prometheus may take, e.g. 10s (1ms to 60s).
    #[arg(long)]
    pub timeout: Option<String>,
}

#[derive(Debug, Args)]
pub struct RampStartArgs {
    /// The flag key.
    pub key: String,
    /// Percentages, strictly increasing, comma-separated (e.g. 1,5,25,50,100).
    #[arg(long, value_delimiter = ',', required = true)]
    pub steps: Vec<f64>,
    /// The variant to roll out (required unless the flag is boolean: then its `true` variant).
    #[arg(long)]
    pub variant: Option<String>,
    /// The variant everyone else gets when the flag has no bucket list yet (default: what they
    /// get now).
    #[arg(long, value_name = "VARIANT")]
    pub others: Option<String>,
    /// Time between steps, e.g. 30m, 1h30m, 90s (1s to 366 days).
    #[arg(long, conflicts_with = "durations")]
    pub every: Option<String>,
    /// Per-step times instead of --every, comma-separated (one fewer than steps).
    #[arg(long, value_delimiter = ',')]
    pub durations: Vec<String>,
    /// Before each step the server GETs this URL; anything but 2xx counts as unhealthy.
    #[arg(long)]
    pub guard_url: Option<String>,
    /// Consecutive unhealthy checks that abort the ramp (and restore the rollout).
    #[arg(long, default_value_t = 1, requires = "guard_url")]
    pub guard_failures: u32,
    /// How long one guard check may take, e.g. 5s (at most 60s).
    #[arg(long, default_value = "5s", requires = "guard_url")]
    pub guard_timeout: String,
    /// A Prometheus analysis guard: Prometheus's base URL, as the server reaches it. Before each
    /// step the server runs --query --count times, --analysis-interval apart, and judges each
    /// value with --success; more than --failure-limit failures abort the ramp and restore the
    /// rollout. Try the query first with `flagctl ramp analyse`.
    #[arg(long, value_name = "URL", requires_all = ["query", "success"], help_heading = "Metric analysis")]
    pub prometheus: Option<String>,
    /// The guard's PromQL instant query (a scalar or an instant vector); may use {{flag}},
    /// {{environment}} and {{variant}}.
    #[arg(long, requires = "prometheus", help_heading = "Metric analysis")]
    pub query: Option<String>,
    /// The condition every value must meet: comparisons of `result` and numbers, and/or/not,
    /// isNaN(result), e.g. 'result < 0.02'.
    #[arg(long, requires = "prometheus", help_heading = "Metric analysis")]
    pub success: Option<String>,
    /// Measurements before each step (1-100; server default 3).
    #[arg(long, requires = "prometheus", help_heading = "Metric analysis")]
    pub count: Option<u32>,
    /// Failed measurements tolerated before each step (below --count; server default 0: the
    /// first failure aborts).
    #[arg(long, requires = "prometheus", help_heading = "Metric analysis")]
    pub failure_limit: Option<u32>,
    /// What an inconclusive measurement (no samples, Prometheus down or refusing the query) does
    /// (server default: pause).
    #[arg(
        long,
        value_enum,
        requires = "prometheus",
        help_heading = "Metric analysis"
    )]
    pub inconclusive: Option<Inconclusive>,
    /// Time between two measurements, e.g. 1m (1s to 24h; server default 1m).
    #[arg(
        long,
        value_name = "DURATION",
        requires = "prometheus",
        help_heading = "Metric analysis"
    )]
    pub analysis_interval: Option<String>,
    /// How long one measurement may take, e.g. 10s (1ms to 60s; server default 10s).
    #[arg(
        long,
        value_name = "DURATION",
        requires = "prometheus",
        help_heading = "Metric analysis"
    )]
    pub analysis_timeout: Option<String>,
    /// More guards from a JSON or YAML file: a list of guards, or an object with `guards`, each
    /// as the API takes it (`kind: prometheus` or `kind: url`). Added to the ones given by
    /// options.
    #[arg(long, value_name = "FILE", help_heading = "Metric analysis")]
    pub guard_file: Option<PathBuf>,
    /// Why: recorded with the ramp and in the audit log.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

/// What an inconclusive measurement does to a ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Inconclusive {
    /// Pause the ramp until someone resumes or aborts it.
    Pause,
    /// Abort the ramp and restore the rollout.
    Abort,
    /// Let it through (counted, not as a failure).
    Continue,
}

impl Inconclusive {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Inconclusive::Pause => "pause",
            Inconclusive::Abort => "abort",
            Inconclusive::Continue => "continue",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// List environments with their versions.
    List,
    /// Create an environment.
    Create {
        /// Its name (letters, digits, '-', '_', '.').
        name: String,
    },
    /// Delete an environment (its history stays in the audit log).
    Delete {
        /// Its name.
        name: String,
        /// Delete it even if it still has flags.
        #[arg(long)]
        force: bool,
    },
    /// GitOps: bind an environment to a Git repository that the server reconciles it from.
    #[command(subcommand)]
    Source(SourceCommand),
}

/// `flagctl env source`: see docs/GITOPS.md.
#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Bind ENV to a Git source (replacing any binding); the server syncs it at once, then
    /// every --interval.
    Set(SourceSetArgs),
    /// Show ENV's source: repository, last synced commit and time, status, error, drift.
    Show {
        /// The environment.
        env: String,
    },
    /// Unbind ENV (its flags stay as they are, and can be edited again).
    Unset {
        /// The environment.
        env: String,
    },
    /// Sync ENV from Git now and show the result (exit 1 if the sync failed).
    Sync {
        /// The environment.
        env: String,
    },
}

/// `flagctl env source set`.
#[derive(Debug, Args)]
pub struct SourceSetArgs {
    /// The environment.
    pub env: String,
    /// The repository: https://…, ssh://… (or user@host:path), file://… or a local path (as the
    /// server sees it).
    #[arg(long)]
    pub repository: String,
    /// The branch whose head is the declared state.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// A flagd document in the repository, or a directory of *.json flag-set files merged in
    /// name order.
    #[arg(long)]
    pub path: String,
    /// How often the server reconciles (1s to 24h).
    #[arg(long, default_value = "30s")]
    pub interval: String,
    /// What to do with live changes that did not come from Git: revert them at the next sync,
    /// reject admin writes (409 managed_by_git; ramps still run), or report them.
    #[arg(long, default_value = "revert", value_parser = ["revert", "reject", "report"])]
    pub drift: String,
    /// Name of a secret in the server's configuration to authenticate to the repository with
    /// (FLAGD_SECRET_<NAME> or a file in --secrets-dir; never sent or stored by flagctl).
    #[arg(long, value_name = "NAME")]
    pub credentials: Option<String>,
    /// Name of a secret in the server's configuration that webhooks sign their body with
    /// (X-Hub-Signature-256).
    #[arg(long, value_name = "NAME")]
    pub webhook_secret: Option<String>,
    /// Why: stored in the audit log.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

/// A change message for the audit log, and the version the change expects. Only for writes whose
/// endpoint honours `If-Match`: the flag writes and `promote` (not `create`, which always expects
/// "no such flag yet", nor `apply`, whose endpoint has no `If-Match`).
#[derive(Debug, Args)]
pub struct Message {
    /// Why: stored in the audit log with the change.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Only change the flag if it is still at this version (as `flag get` showed); otherwise
    /// fail. Without it, the version read just before writing is used.
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// List flags: key, state, type, default, rollout %, version, last update.
    List,
    /// Print a flag's whole definition.
    Get {
        /// The flag key.
        key: String,
    },
    /// Create a flag. A boolean flag gets variants on=true and off=false, default off.
    Create(CreateArgs),
    /// Turn a flag on (state ENABLED).
    Enable {
        /// The flag key.
        key: String,
        #[command(flatten)]
        message: Message,
    },
    /// Turn a flag off (state DISABLED: everyone gets their code default).
    Disable {
        /// The flag key.
        key: String,
        #[command(flatten)]
        message: Message,
    },
    /// Set the variant served when targeting does not decide.
    Default {
        /// The flag key.
        key: String,
        /// A variant name.
        variant: String,
        #[command(flatten)]
        message: Message,
    },
    /// Roll a variant out to a percentage of users (sticky: raising it only adds users,
    /// lowering it only removes users; 0 and 100 are exact for everyone).
    ///
    /// A boolean flag rolls out its `true` variant; other flags name the variant with
    /// --variant. Existing buckets may be in any order: the rollout is found by variant.
    Rollout {
        /// The flag key.
        key: String,
        /// 0 to 100, in steps of 0.01 (e.g. 12.5).
        percentage: f64,
        /// The variant to roll out (required unless the flag is boolean).
        #[arg(long)]
        variant: Option<String>,
        /// The variant everyone else gets when the flag has no bucket list yet (default: what
        /// they get now).
        #[arg(long, value_name = "VARIANT")]
        others: Option<String>,
        #[command(flatten)]
        message: Message,
    },
    /// Replace a flag's targeting rule (JsonLogic).
    Target(TargetArgs),
    /// Delete a flag.
    Delete {
        /// The flag key.
        key: String,
        #[command(flatten)]
        message: Message,
    },
    /// Show a flag's change history: who, when, why, and what changed.
    History {
        /// The flag key.
        key: String,
        /// How many changes to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// The type of a new flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlagKind {
    /// true / false.
    Bool,
    /// Text.
    String,
    /// Numbers.
    Number,
    /// JSON objects.
    Json,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The flag key: any non-empty text up to 256 bytes (flagctl percent-encodes it in URLs).
    pub key: String,
    /// The flag's type.
    #[arg(long = "type", value_enum, default_value_t = FlagKind::Bool)]
    pub kind: FlagKind,
    /// A variant, as name=value (repeat for each). Values are parsed as the flag's type.
    #[arg(long = "variant", value_name = "NAME=VALUE")]
    pub variants: Vec<String>,
    /// The default variant (default: `off` for booleans, else the first variant).
    #[arg(long = "default", value_name = "VARIANT")]
    pub default: Option<String>,
    /// A description.
    #[arg(long)]
    pub description: Option<String>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Why: stored in the audit log with the change.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The flag key.
    pub key: String,
    /// A file holding the rule (JSON).
    #[arg(long, conflicts_with = "json", required_unless_present = "json")]
    pub file: Option<PathBuf>,
    /// The rule, inline (JSON); `{}` removes targeting.
    #[arg(long)]
    pub json: Option<String>,
    #[command(flatten)]
    pub message: Message,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The flagd file to check.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The flagd file to compare with the server.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Also show flags on the server that the file does not have (they would be deleted).
    #[arg(long)]
    pub prune: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The flagd file to apply.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Delete flags on the server that the file does not have.
    #[arg(long)]
    pub prune: bool,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why: stored in the audit log with the change.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The flag key.
    pub key: String,
    /// The environment to copy from.
    #[arg(long)]
    pub from: String,
    /// The environment to copy to.
    #[arg(long)]
    pub to: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub message: Message,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The flag key.
    pub key: String,
    /// The evaluation context as JSON, e.g. '{"targetingKey":"u1","email":"a@b.c"}'.
    #[arg(long, default_value = "{}")]
    pub context: String,
    /// Evaluate locally against this flagd file instead of the server (no server needed).
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print the identity and access the server sees for your credential: the actor it records
    /// in the audit log, the role, the environments (or every environment), and the token or
    /// OIDC ID token (issuer, subject, admitting rule, expiry) it came from.
    Whoami,
    /// List the OIDC trust policies the server enforces (flagd-server --oidc-config): each
    /// issuer with its audience and key cache (when its keys were last fetched, their ids, the
    /// last fetch error), and each rule with the claims it matches and the access it grants.
    /// Needs an admin for every environment.
    Oidc,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// The token's role: `admin` manages flags, environments and tokens; `sdk` reads one
        /// environment's flags (evaluation and the update stream).
        #[arg(long, value_parser = ["admin", "sdk"])]
        role: String,
        /// A name (also the actor recorded for its writes).
        #[arg(long)]
        name: String,
        /// The environment(s) the token is for. An sdk token reads one (default: --env); an admin
        /// token is confined to these (repeat the option, or separate with commas); without it,
        /// an admin token covers every environment.
        #[arg(long = "environment", value_name = "ENV", value_delimiter = ',')]
        environments: Vec<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token; it stops working at once, and its streams end.
    Revoke {
        /// The token id (tok_...).
        id: String,
    },
}

/// `docs/CLI.md`: every command's help, generated from these definitions.
#[cfg(test)]
fn markdown() -> String {
    use clap::CommandFactory as _;
    let mut command = Cli::command();
    command.build();
    let mut out = String::from(
        "# flagctl reference\n\nGenerated from the clap definitions in `flag-cli/src/cli.rs`; a test fails when this file \
         is stale (`UPDATE_CLI_DOCS=1 cargo test -p flag-cli` rewrites it). Do not edit by hand.\n\n",
    );
    render(&mut command, "flagctl", &mut out);
    out
}

#[cfg(test)]
fn render(command: &mut clap::Command, path: &str, out: &mut String) {
    let help = command.render_long_help().to_string();
    let lines: Vec<&str> = help.lines().map(str::trim_end).collect();
    out.push_str(&format!(
        "## `{path}`\n\n```text\n{}\n```\n\n",
        lines.join("\n").trim_end()
    ));
    for sub in command.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = format!("{path} {}", sub.get_name());
        render(sub, &name, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CLI.md");
        let generated = markdown();
        if std::env::var_os("UPDATE_CLI_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == generated,
            "docs/CLI.md is stale: run `UPDATE_CLI_DOCS=1 cargo test -p flag-cli`"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}

//! BQSKit compatibility (cargo feature `python`): BQSKit tasks run on the workers ([`task`]),
//! each worker's in a Python process it supervises ([`supervisor`], [`child`]); BQSKit's client
//! protocol is served on the gateway's port ([`session`]), and `bqrt compile` compiles a circuit
//! with BQSKit through bqrt ([`compile`]).
//!
//! Python is found once per rank before MPI starts ([`env`]); rank 0 reads BQSKit clients'
//! frames in Rust ([`unpickle`]) and embeds it lazily for the frames that reader leaves to the
//! restricted unpickler ([`interp`]).

pub mod call;
pub mod child;
pub mod compile;
pub mod env;
pub mod interp;
pub mod level;
pub mod pickle;
pub mod session;
pub mod size;
pub mod supervisor;
pub mod task;
pub mod tokens;
pub mod unpickle;

use crate::executor::Registry;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// `bqrt serve` options for BQSKit clients.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeOptions {
    /// Python interpreter whose environment has bqskit (default: the active VIRTUAL_ENV's, else
    /// python3 on PATH).
    #[arg(long, env = "BQRT_PYTHON")]
    pub python: Option<PathBuf>,
    /// Also accept BQSKit clients from these addresses (IP or ADDR/PREFIX, comma-separated).
    /// BQSKit's protocol carries pickled code and has no authentication: by default only
    /// loopback clients are served.
    #[arg(long, default_value = "")]
    pub bqskit_allow: String,
    /// Serve BQSKit clients of every local user on loopback, not only the runtime's own user
    /// (each of them can then run any code as this user).
    #[arg(long)]
    pub bqskit_any_user: bool,
    /// Serve only the native protocol: no Python, no BQSKit clients.
    #[arg(long)]
    pub no_python: bool,
    /// Most memory each worker's Python process may use (4G, 512M, ...; a plain number is MiB).
    /// A task that allocates past it fails (MemoryError, or its process is killed and replaced);
    /// other tasks are not affected. Default: no limit.
    #[arg(long, env = "BQRT_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Seconds a cancelled BQSKit task that does not stop by itself may still run before its
    /// worker's Python process is killed and replaced.
    #[arg(long, env = "BQRT_CANCEL_GRACE", default_value_t = 1.0)]
    pub cancel_grace: f64,
}

/// Set BLAS libraries to one thread per worker unless already set (before any is loaded).
fn one_blas_thread() {
    for var in [
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}

type Foreign = Option<Arc<dyn crate::gateway::ForeignProtocol>>;

/// What the gateway gets: BQSKit's protocol (if on) and a notice for the operator.
static GATEWAY: OnceLock<(Foreign, String)> = OnceLock::new();

/// The gateway's BQSKit protocol and the start-up notice about it (after [`setup`]).
pub fn gateway_setup() -> (Foreign, String) {
    GATEWAY
        .get()
        .cloned()
        .unwrap_or_else(|| (None, "bqrt: BQSKit support off".into()))
}

/// Find Python, register the `bqskit` task and prepare the gateway's BQSKit protocol (every
/// rank, before MPI starts). An explicitly chosen environment (`--python`, `VIRTUAL_ENV`) that
/// does not work is an error; with none chosen and `python3` unusable, BQSKit support is off
/// and the notice says how to turn it on.
pub fn setup(registry: Registry, opts: &ServeOptions, listen: &str) -> Result<Registry, String> {
    let off = |notice: String| {
        let _ = GATEWAY.set((None, notice));
    };
    if opts.no_python {
        off("bqrt: BQSKit support off (--no-python)".into());
        return Ok(registry);
    }
    let allow = session::AllowList::parse(&opts.bqskit_allow)?;
    let (exe, source) = env::choose(opts.python.as_deref());
    let env = match env::probe(&exe) {
        Ok(e) => e,
        Err(e) if source == env::Source::Path => {
            off(format!("bqrt: BQSKit support off: {e}"));
            return Ok(registry);
        }
        Err(e) => return Err(e.to_string()),
    };
    one_blas_thread();
    let memory = opts
        .memory_limit
        .as_deref()
        .map(|s| size::parse("--memory-limit", s))
        .transpose()?;
    if !(opts.cancel_grace.is_finite() && (0.0..=3600.0).contains(&opts.cancel_grace)) {
        return Err(format!(
            "--cancel-grace {}: must be between 0 and 3600 seconds",
            opts.cancel_grace
        ));
    }
    supervisor::configure(supervisor::Limits {
        memory,
        cancel_grace: std::time::Duration::from_secs_f64(opts.cancel_grace),
        python: env.command.clone(),
    });
    let notice = bqskit_notice(&env, opts, allow.is_empty(), listen);
    interp::set_env(env);
    let foreign: Arc<dyn crate::gateway::ForeignProtocol> = Arc::new(session::BqskitProtocol {
        allow,
        any_user: opts.bqskit_any_user,
    });
    let _ = GATEWAY.set((Some(foreign), notice));
    Ok(registry
        .task_raw(task::FUNCTION, |ctx, args, _format| task::run(ctx, args))
        .task_raw(call::FUNCTION, call::run)
        .check_raw(call::FUNCTION, call::check)
        .warm_up(task::warm_up))
}

fn bqskit_notice(
    env: &env::PythonEnv,
    opts: &ServeOptions,
    loopback_only: bool,
    listen: &str,
) -> String {
    let allow = &opts.bqskit_allow;
    let mut s = format!(
        "bqrt: BQSKit {} clients accepted on the client port (Python {} at {})",
        env.bqskit,
        env.version,
        env.executable.display()
    );
    if env.bqskit != env::BQSKIT_VERSION {
        s.push_str(&format!(
            "\nbqrt: WARNING: bqskit {} is installed; bqrt is tested with bqskit=={}",
            env.bqskit,
            env::BQSKIT_VERSION
        ));
    }
    let who = match opts.bqskit_any_user {
        false => "only this user's BQSKit clients on this machine (loopback) are served",
        true => "WARNING: every local user's BQSKit clients on loopback are served (--bqskit-any-user), and each can run any code as this user",
    };
    if loopback_only {
        s.push_str(&format!("\nbqrt: BQSKit's protocol carries pickled code and has no authentication: {who}; --bqskit-allow ADDR admits other machines"));
    } else {
        s.push_str(&format!(
            "\nbqrt: WARNING: BQSKit clients from {allow} are served besides loopback. BQSKit's protocol carries pickled code and has no authentication: anyone who can reach {listen} from there can run any code on this cluster"
        ));
    }
    s
}

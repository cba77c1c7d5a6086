//! The `jepsen-style` binary: `run` one test, `cap-report` a cp and an ap run side by side,
//! `report` and `cap-table` to re-render stored runs, and the hidden `node` subcommand the runner
//! starts its cluster nodes with.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jepsen_style::cluster::NodeBinary;
use jepsen_style::layer::{self, LayerChoice};
use jepsen_style::nemesis::NemesisKind;
use jepsen_style::options::{utc, RunOptions};
use jepsen_style::results::{Mode, Results};
use jepsen_style::run;
use jepsen_style::verdict::summary;
use jepsen_style::workload::Workload;

/// Extra time a run may take beyond its time limit (startup, recovery, final reads, checks).
const RUN_OVERHEAD: Duration = Duration::from_secs(180);

#[derive(Parser)]
#[command(
    name = "jepsen-style",
    about = "Partition-injection tests for capkv: record histories, check them, report"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Cp,
    Ap,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Register,
    Set,
    Bank,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayerArg {
    /// capkv's built-in fault filter.
    BuiltIn,
    /// Network namespaces on a bridge, partitions as iptables rules (root, ip, iptables).
    Netns,
    /// netns when available, else built-in.
    Auto,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// partition-halves, partition-majority, isolate-leader, majorities-ring, bridge, kill, pause,
    /// clock-skew, mixed, partition-oneway (netns layer only).
    #[arg(long)]
    nemesis: String,
    /// Fault layer for partitions: built-in, netns, or auto (netns when root with ip and iptables
    /// and namespaces work, else built-in).
    #[arg(long, value_enum, default_value = "auto")]
    layer: LayerArg,
    /// Seconds of client traffic (faults in the first 75%, then healed).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Where runs are stored.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/store"))]
    store: PathBuf,
    /// Start nodes from this capkv binary instead of this executable.
    #[arg(long)]
    capkv_bin: Option<PathBuf>,
}

// Parsed once per process: the size of the node's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one test: start a cluster, drive clients under a nemesis, check, write the report.
    Run {
        #[arg(long, value_enum)]
        mode: ModeArg,
        #[arg(long, value_enum, default_value = "register")]
        workload: WorkloadArg,
        #[command(flatten)]
        common: Common,
    },
    /// The same seeded faults against a cp and an ap register, side by side.
    CapReport {
        #[command(flatten)]
        common: Common,
    },
    /// Re-render a stored run's report.html from its results.json and history.jsonl.
    Report {
        /// The run's directory, e.g. store/cp-register-partition-halves/2026-12-04T144808Z.
        dir: PathBuf,
    },
    /// Print the CAP table of two stored runs (a cp and an ap run under the same faults), and
    /// optionally write the CAP report page.
    CapTable {
        /// The cp run's directory (holding results.json).
        cp: PathBuf,
        /// The ap run's directory.
        ap: PathBuf,
        /// Also write the CAP report page here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Run one capkv node (used by the runner to start its cluster).
    #[command(hide = true)]
    Node(capkv::cli::NodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => run_node(&args),
        Command::Run { mode, workload, common } => {
            let workload = match workload {
                WorkloadArg::Register => Workload::Register,
                WorkloadArg::Set => Workload::Set,
                WorkloadArg::Bank => Workload::Bank,
            };
            let mode = match mode {
                ModeArg::Cp => "cp",
                ModeArg::Ap => "ap",
            };
            with_runtime(|| async move {
                let opts = options(&common, mode, workload)?;
                let outcome = bounded(&opts, run::run(&opts)).await?;
                print!("{}", summary(&outcome.results));
                println!("  report: {}", outcome.dir.join("report.html").display());
                Ok(outcome.results.valid)
            })
        }
        Command::CapReport { common } => with_runtime(|| cap_report(common)),
        Command::Report { dir } => finish(rerender(&dir)),
        Command::CapTable { cp, ap, html } => finish(cap_table(&cp, &ap, html.as_deref())),
    }
}

/// Rewrites `dir/report.html` from the stored results and history; returns the verdict.
fn rerender(dir: &std::path::Path) -> Result<bool, String> {
    let results = Results::load(&dir.join("results.json"))?;
    let path = dir.join("history.jsonl");
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let history = jepsen_style::history::read_jsonl(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let out = dir.join("report.html");
    std::fs::write(&out, jepsen_style::report::render_run_html(&results, &history))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    print!("{}", summary(&results));
    println!("  report: {}", out.display());
    Ok(results.valid)
}

/// Prints the CAP table of two stored runs; returns whether both are valid.
fn cap_table(cp: &std::path::Path, ap: &std::path::Path, html: Option<&std::path::Path>) -> Result<bool, String> {
    let cp = Results::load(&cp.join("results.json"))?;
    let ap = Results::load(&ap.join("results.json"))?;
    if cp.mode != Mode::Cp || ap.mode != Mode::Ap {
        return Err(format!(
            "expected a cp run then an ap run, got a {} run then a {} run",
            cp.mode, ap.mode
        ));
    }
    print!("{}", jepsen_style::report::render_cap_terminal(&cp, &ap));
    if let Some(path) = html {
        std::fs::write(path, jepsen_style::report::render_cap_html(&cp, &ap))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("cap report: {}", path.display());
    }
    Ok(cp.valid && ap.valid)
}

/// The exit code of a command that needs no runtime.
fn finish(result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jepsen-style: {e}");
            ExitCode::from(2)
        }
    }
}

fn options(common: &Common, mode: &'static str, workload: Workload) -> Result<RunOptions, String> {
    let binary = match &common.capkv_bin {
        Some(p) => NodeBinary::Capkv(p.clone()),
        None => NodeBinary::OwnExe(std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?),
    };
    let choice = match common.layer {
        LayerArg::BuiltIn => LayerChoice::BuiltIn,
        LayerArg::Netns => LayerChoice::Netns,
        LayerArg::Auto => LayerChoice::Auto,
    };
    let (layer, layer_reason) = layer::resolve(choice)?;
    let opts = RunOptions {
        mode,
        workload,
        nemesis: NemesisKind::parse(&common.nemesis)?,
        time_limit_s: common.time_limit,
        seed: common.seed,
        nodes: common.nodes,
        concurrency: common.concurrency,
        store: common.store.clone(),
        binary,
        layer,
        layer_reason,
    };
    opts.validate()?;
    Ok(opts)
}

/// Runs `fut` with the run's own time bound, and stops on Ctrl-C.
async fn bounded<T>(opts: &RunOptions, fut: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    let limit = Duration::from_secs(opts.time_limit_s) + RUN_OVERHEAD;
    tokio::select! {
        r = tokio::time::timeout(limit, fut) => r.map_err(|_| format!("the run exceeded its bound of {} s", limit.as_secs()))?,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}

async fn cap_report(common: Common) -> Result<bool, String> {
    let cp_opts = options(&common, "cp", Workload::Register)?;
    let ap_opts = options(&common, "ap", Workload::Register)?;
    let cp = bounded(&cp_opts, run::run(&cp_opts)).await?;
    print!("{}", summary(&cp.results));
    let ap = bounded(&ap_opts, run::run(&ap_opts)).await?;
    print!("{}", summary(&ap.results));
    println!(
        "{}",
        jepsen_style::report::render_cap_terminal(&cp.results, &ap.results)
    );
    let dir = common
        .store
        .join("cap-report")
        .join(utc(std::time::SystemTime::now()).replace(':', ""));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let html = jepsen_style::report::render_cap_html(&cp.results, &ap.results);
    let path = dir.join("cap-report.html");
    std::fs::write(&path, html).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    for (name, r) in [("cp-results.json", &cp.results), ("ap-results.json", &ap.results)] {
        std::fs::write(dir.join(name), r.to_json()).map_err(|e| format!("cannot write {name}: {e}"))?;
    }
    println!("cap report: {}", path.display());
    Ok(cp.results.valid && ap.results.valid)
}

/// Builds a runtime, runs `f`, and drops the runtime (cancelling every task, which stops every
/// node the run started) before the exit code is returned.
fn with_runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let result = runtime.block_on(f());
    drop(runtime);
    finish(result)
}

fn run_node(args: &capkv::cli::NodeArgs) -> ExitCode {
    // Die with the runner: the runner starts nodes from long-lived runtime threads.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        return ExitCode::from(3);
    }
    let options = match capkv::cli::node_options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("jepsen-style node: {e}");
            return ExitCode::from(5);
        }
    };
    let _guard = match capkv::observe::logging::init_node(&options.data_dir, args.log_format, &args.log_level) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("jepsen-style node: {e}");
            return ExitCode::from(5);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match runtime.block_on(capkv::node::run::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jepsen-style node: {e}");
            ExitCode::from(5)
        }
    }
}

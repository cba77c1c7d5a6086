//! The `capkv` binary: parses the command line and runs the server, launcher or client.
#![forbid(unsafe_code)]

use clap::Parser;

use capkv::cli::{self, Cli, ClusterArgs, ClusterCommand, Command, Done, Report};
use capkv::error::Error;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    let output = cli.client_flags().output;
    let code = match &cli.command {
        Command::Node(args) => run_node(args),
        Command::Completion { shell } => cli::print_completion(*shell),
        Command::Cluster(ClusterArgs {
            command: ClusterCommand::Up(args),
            ..
        }) => cli::finish(output, runtime(2).block_on(run_up(args.clone())).map(done)),
        Command::Cluster(ClusterArgs {
            command: ClusterCommand::Down { data_dir },
            ..
        }) => cli::finish(output, runtime(1).block_on(capkv::cluster::down(data_dir)).map(done)),
        _ => {
            capkv::observe::logging::init_client();
            cli::finish(output, runtime(1).block_on(cli::run_client(&cli)))
        }
    };
    std::process::exit(code);
}

fn done(_: ()) -> Report {
    Report::of(&Done { ok: true }, false)
}

async fn run_up(args: capkv::cluster::UpArgs) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Internal(format!("cannot find the capkv binary: {e}")))?;
    capkv::cluster::up(args, exe).await
}

fn run_node(args: &cli::NodeArgs) -> i32 {
    let options = match cli::node_options(args) {
        Ok(o) => o,
        Err(e) => return cli::finish(cli::Output::Table, Err(e)),
    };
    let _guard = match capkv::observe::logging::init_node(&options.data_dir, args.log_format, &args.log_level) {
        Ok(g) => g,
        Err(e) => return cli::finish(cli::Output::Table, Err(Error::InvalidInput(e))),
    };
    let workers = args.worker_threads.map_or_else(capkv::cluster::cpus, usize::from);
    let result = runtime(workers).block_on(capkv::node::run::run(options));
    if let Err(e) = &result {
        tracing::error!("node failed: {e}");
    }
    cli::finish(cli::Output::Table, result.map(done))
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().expect("the tokio runtime starts")
}

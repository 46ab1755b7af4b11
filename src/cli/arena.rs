//! `idforge arena`: the human preference test. Serve the rater's page over a bench folder,
//! simulate raters, export the votes for the leaderboard.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use idforge_bench::arena::export::default_output;
use idforge_bench::arena::{
    ArenaConfig, SimulateOptions, Store, export_votes, serve_until_signal, simulate_blocking,
};
use idforge_core::limits::Count;
use idforge_core::schema::Question;

#[derive(Debug, Args)]
pub struct ArenaArgs {
    #[command(subcommand)]
    command: ArenaCommand,
}

#[derive(Debug, Subcommand)]
enum ArenaCommand {
    /// Serve the rater's page: two images of two hidden methods for one (identity, prompt,
    /// seed), left/right at random, and one question (fidelity to the reference, or adherence
    /// to the prompt). Votes go into the SQLite database; stop with Ctrl-C.
    ///
    /// Pairs favour the method pairs and items with the fewest votes, and a rater never sees
    /// an item twice for the same question. The first pairs of each question are practice
    /// (stored, not rated). Raters and pair tokens survive a restart on the same --db.
    Serve(ServeArgs),
    /// Write the database's votes as the `votes` Parquet table (practice answers included and
    /// flagged), by default to <bench>/arena/votes.parquet, where `bench leaderboard` finds them.
    /// Safe while the server runs.
    Export(ExportArgs),
    /// Scripted raters over HTTP, for the demo and for checking a deployment. They answer by a
    /// fixed rule on the images (fidelity: the image nearer the reference in small grey
    /// thumbnails wins more often; adherence: at random): a simulation, never data about
    /// methods. Fails if the server refuses any vote.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The bench folder (with imported methods: `idforge bench import`).
    bench: PathBuf,
    /// The vote database (SQLite; created if absent). One per bench folder; keep it private,
    /// as it holds the key that signs the pair tokens.
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on. Use 0.0.0.0:<port> to let other machines in (put it behind a
    /// TLS proxy when raters come over the Internet).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    addr: String,
    /// Also show copy-reference (the reference photo itself) as a contestant. Off by default:
    /// it wins every fidelity vote and says nothing about a method.
    #[arg(long)]
    include_copy_reference: bool,
    /// The questions to ask, in block order.
    #[arg(long, value_delimiter = ',', default_value = "fidelity,adherence", value_parser = parse_question)]
    questions: Vec<Question>,
    /// Practice pairs at the start of each question (stored, not rated); 0 to 1000.
    #[arg(long, default_value = "2")]
    practice: Count<0, 1000>,
    /// Pairs of one question in a row before switching to the other; 1 to 1000.
    #[arg(long, default_value = "10")]
    block: Count<1, 1000>,
    /// Seconds a shown pair may be answered; 1 to 604800 (a week).
    #[arg(long, default_value = "3600")]
    task_ttl_secs: Count<1, 604_800>,
    /// Days a rater id stays valid; 1 to 3650.
    #[arg(long, default_value = "30")]
    rater_ttl_days: Count<1, 3650>,
    /// New rater ids one IP address may obtain per hour (`POST /api/raters`); 0 turns the
    /// limit off. Behind a proxy every rater shares its address: raise it there.
    #[arg(long, default_value = "100")]
    raters_per_ip_per_hour: Count<0, 1_000_000>,
    /// The bench folder was moved or copied: take over a --db made for it at its old path
    /// (the database then records the new path). Without it such a database is refused.
    #[arg(long)]
    rebind: bool,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The vote database `arena serve` wrote.
    #[arg(long)]
    db: PathBuf,
    /// The Parquet file to write (default: <bench>/arena/votes.parquet of the database's bench
    /// folder).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// The arena's URL (as `arena serve` prints it).
    #[arg(long)]
    url: String,
    /// Raters working at the same time (1 to 10000).
    #[arg(long, default_value = "8")]
    raters: Count<1, 10_000>,
    /// Counted votes per rater, practice pairs come on top (1 to 1000000).
    #[arg(long, default_value = "15")]
    votes: Count<1, 1_000_000>,
    /// Seed of the raters' answers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `HOST:PORT` that resolves to an address, checked before anything else so that a typo is
/// not reported as a busy port.
fn parse_addr(s: &str) -> Result<String, String> {
    idforge_bench::arena::server::resolve_addr(s)
        .map(|_| s.to_string())
        .map_err(|e| match e {
            idforge_bench::arena::ArenaError::Serve { message, .. } => message,
            other => other.to_string(),
        })
}

fn parse_question(s: &str) -> Result<Question, String> {
    Question::parse(s).ok_or_else(|| format!("`{s}` is not a question: fidelity or adherence"))
}

pub fn run(args: ArenaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ArenaCommand::Serve(a) => serve(a),
        ArenaCommand::Export(a) => export(a),
        ArenaCommand::Simulate(a) => simulate(a),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = ArenaConfig::new(&a.bench, &a.db);
    config.include_copy_reference = a.include_copy_reference;
    config.questions = a.questions;
    config.questions.dedup();
    config.practice = a.practice.u32();
    config.block = a.block.u32();
    config.task_ttl = Duration::from_secs(a.task_ttl_secs.get());
    config.rater_ttl = Duration::from_secs(a.rater_ttl_days.get() * 24 * 3600);
    config.raters_per_ip_per_hour = a.raters_per_ip_per_hour.u32();
    config.rebind = a.rebind;
    let db = a.db.clone();
    serve_until_signal(config, &a.addr, |arena, addr| {
        let items = arena.items();
        println!(
            "arena over {}: {} items, {} methods ({}), {} comparisons per question{}",
            a.bench.display(),
            items.items.len(),
            items.methods.len(),
            items.methods.join(", "),
            items.comparisons(),
            if items.skipped > 0 {
                format!(
                    "; {} protocol jobs left out (fewer than two methods have them)",
                    items.skipped
                )
            } else {
                String::new()
            }
        );
        println!("votes go to {}", db.display());
        println!("serving http://{addr}/ — open it in a browser; Ctrl-C stops");
    })
    .with_context(|| format!("arena server for {}", a.bench.display()))?;
    let votes = Store::open_read_only(&db)
        .and_then(|s| s.vote_count())
        .with_context(|| format!("reading {}", db.display()))?;
    println!(
        "stopped; {votes} votes in {} (export: idforge arena export --db {})",
        db.display(),
        db.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn export(a: ExportArgs) -> anyhow::Result<ExitCode> {
    let out = match a.output {
        Some(o) => o,
        None => default_output(&a.db).with_context(|| {
            format!(
                "finding the bench folder of {} (or give -o)",
                a.db.display()
            )
        })?,
    };
    let s = export_votes(&a.db, &out)
        .with_context(|| format!("exporting the votes of {}", a.db.display()))?;
    let per_question = s
        .per_question
        .iter()
        .map(|(q, n)| format!("{} {n}", q.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "wrote {} votes ({} practice) from {} raters to {}: counted {per_question}",
        s.rows,
        s.practice,
        s.raters,
        s.path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn simulate(a: SimulateArgs) -> anyhow::Result<ExitCode> {
    let opts = SimulateOptions {
        url: a.url.clone(),
        raters: a.raters.usize(),
        votes: a.votes.usize(),
        seed: a.seed,
    };
    let r = simulate_blocking(&opts).context("simulated raters")?;
    println!(
        "{} simulated raters cast {} votes (+{} practice) in {:.2} s ({:.0} answers/s){}; \
         simulated answers, not data about methods",
        r.raters,
        r.votes,
        r.practice,
        r.elapsed.as_secs_f64(),
        r.votes_per_second(),
        if r.exhausted > 0 {
            format!("; {} ran out of pairs", r.exhausted)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

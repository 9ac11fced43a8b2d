//! The tuner suite: the Bayesian strategy measured through the real system — a coordinator and an
//! agent on this machine, tuning jobs whose trials are real processes that print their objective,
//! read back through the API — beside the same strategy in the tuner's offline bench
//! (`crates/trainyard-tuner/benches/strategies.rs`, same problems, same protocol) and Optuna's TPE
//! from that bench's cache when `scripts/bench-tuner` has filled it.
//!
//! One at a time the system must suggest exactly what the offline bench suggests (same seed, same
//! finished trials): the suite counts the runs that do. Four at a time the system differs by
//! design: a freed slot is filled at once, beside the three still running, where the offline bench
//! suggests synchronous batches of four (as Optuna's TPE ran). Regret is best-so-far f − f* after
//! 10, 25 and 50 trials in the order trials were created (the 10-trial cells from tuning jobs of
//! 10 trials: the strategy is told its budget), median and quartiles over seeds; for a
//! noisy problem, f of the trial that looked best (its trials print f plus the offline bench's
//! noise for their seed and index).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use trainyard_proto::model::api;
use trainyard_proto::pb;
use trainyard_proto::pb::hyper_parameter_tuning_client::HyperParameterTuningClient;
use trainyard_tuner::{SearchSpace, Strategy};

// The offline bench's problems, shared rather than copied (a change there is measured here too).
#[path = "../../trainyard-tuner/benches/common/mod.rs"]
mod problems;

use problems::{Params, Problem, Trial, as_the_coordinator_runs, in_batches, quartiles, regrets, versus};

/// One problem per row of the issue that asked for this (2-D smooth multimodal, 6-D smooth
/// multimodal, 10-D rugged multimodal, mixed continuous + integer + categorical); `all` runs every
/// problem of the offline bench, the noisy ones with the same noise.
pub const DEFAULT_PROBLEMS: &str = "branin,hartmann6,ackley10,network";
const TRIALS: usize = 50;
const CHECKPOINTS: [usize; 3] = [10, 25, 50];
/// The strategy is told its budget (MaxNumberOfTrainingJobs) and spends a small one differently:
/// the 10-trial cells come from tuning jobs of 10 trials.
const SHORT_BUDGET: usize = 10;

/// Whether a run of `budget` trials gives the regret after `checkpoint` trials: the 10-trial cells
/// come from the 10-trial runs, the others from the longest. The strategy spends a budget
/// differently only when it ends before
/// [`BAYESIAN_RANDOM_START`](trainyard_tuner::strategy::BAYESIAN_RANDOM_START) results can be in
/// (`Strategy::suggest`), so a run of 25 trials, four or fewer at a time, is the first 25 of a run
/// of 50 (a unit test of the strategy holds it to that, and the suite checks it offline for
/// every seed it runs).
fn from_the_run(checkpoint: usize, budget: usize) -> bool {
    (checkpoint == SHORT_BUDGET) == (budget == SHORT_BUDGET)
}

/// Where `scripts/bench-tuner` caches Optuna's TPE results (40 seeds).
const TPE_CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tuner-bench/optuna-cache");

pub struct Settings {
    pub problems: Vec<String>,
    pub seeds: u64,
}

/// The static hyperparameter that tells a trial its tuning job's seed (for a noisy problem's noise).
const SEED: &str = "trainyard_seed";

/// Run as a trial's program (`trainyard-bench --objective NAME`): evaluates the problem at the
/// hyperparameters the agent passes in `SM_HPS` and prints `objective=VALUE` (shortest exact form).
/// A noisy problem adds the offline bench's noise for (seed, trial index): the seed from a static
/// hyperparameter, the index from the trial's name (`<tuning job>-<index + 1, 3 digits>-<hash>`).
pub fn objective(name: &str) -> anyhow::Result<()> {
    let problem = find(name)?;
    let hyperparameters: Params =
        serde_json::from_str(&std::env::var("SM_HPS").context("SM_HPS is not set: run as a trial")?)?;
    let mut value = (problem.f)(&hyperparameters);
    if problem.noise > 0.0 {
        let seed: u64 = hyperparameters.get(SEED).context("no seed hyperparameter")?.parse()?;
        let job = std::env::var("TRAINING_JOB_NAME").context("TRAINING_JOB_NAME is not set")?;
        let number: u64 = job.rsplit('-').nth(1).context("a trial's name has its index")?.parse()?;
        value += problem.noise * problems::gaussian(seed, number - 1);
    }
    println!("objective={value}");
    Ok(())
}

fn find(name: &str) -> anyhow::Result<Problem> {
    let all = problems::problems();
    let names: Vec<&str> = all.iter().map(|p| p.name).collect();
    let names = names.join(", ");
    all.into_iter().find(|p| p.name == name).with_context(|| format!("no problem named {name:?} (there are: {names})"))
}

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    if settings.seeds == 0 {
        bail!("--tuner-seeds must be at least 1");
    }
    let problems: Vec<Problem> = if settings.problems.iter().any(|n| n == "all") {
        problems::problems()
    } else {
        settings.problems.iter().map(|n| find(n)).collect::<anyhow::Result<_>>()?
    };
    let c = crate::agents::cluster(&[]).await?;
    let mut tuning = HyperParameterTuningClient::new(c.channel.clone());
    let bench = std::env::current_exe()?;
    let tpe = tpe_cache();
    println!("tuner suite: Bayesian, {TRIALS} trials, {} seeds; best-so-far regret, median [q1, q3]", settings.seeds);
    println!(
        "{:<12} {:>5} {:>6}  {:<26} {:<26} {:<26} {:<15} {:>6}",
        "problem",
        "batch",
        "trials",
        "through the system",
        "offline bench",
        "Optuna TPE (40 seeds)",
        "system vs TPE",
        "s/run"
    );
    for problem in &problems {
        let program = crate::install_program(
            &c.program_dir,
            &format!("objective-{}", problem.name),
            &format!("#!/bin/sh\nexec '{}' --objective '{}'\n", bench.display(), problem.name),
        )?;
        let ranges: api::ParameterRanges = trainyard_proto::model::api_json(&problem.ranges)?;
        let space = SearchSpace::from_ranges(&ranges).map_err(|e| anyhow::anyhow!("{e}"))?;
        for batch in [1usize, 4] {
            // Regret of every seed at each checkpoint, through the system and offline.
            let mut system: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            let mut offline: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
            let mut identical: BTreeMap<(usize, &str), u64> = BTreeMap::new();
            let mut per_run = 0.0;
            for seed in 0..settings.seeds {
                for budget in [SHORT_BUDGET, TRIALS] {
                    let name = format!("tuner-{}-{batch}-{seed}-{budget}", problem.name.replace('_', "-"));
                    let request = tuning_request(&name, &program.display().to_string(), &ranges, seed, batch, budget)?;
                    let run_started = Instant::now();
                    tuning
                        .create_hyper_parameter_tuning_job(pb::CreateHyperParameterTuningJobRequest::from(request))
                        .await?;
                    crate::agents::wait_tuning(&mut tuning, &name).await?;
                    let trials = trials_of(&mut tuning, &name, problem, budget).await?;
                    if budget == TRIALS {
                        per_run += run_started.elapsed().as_secs_f64() / settings.seeds as f64;
                    }
                    // Which offline protocol the system's run followed, trial for trial: one at a
                    // time it must be the offline bench's; four at a time, synchronous batches or
                    // slots filled one by one as trials end (or neither, when trials end unevenly).
                    let tried = |trials: &[Trial]| trials.iter().map(|t| t.hyperparameters.clone()).collect::<Vec<_>>();
                    let (count, parallel) = (budget as u64, batch as u64);
                    let offline_run = in_batches(&Strategy::Bayesian, &space, problem, seed, parallel, count);
                    if tried(&trials) == tried(&offline_run) {
                        *identical.entry((budget, "batches")).or_insert(0) += 1;
                    } else if tried(&trials)
                        == tried(&as_the_coordinator_runs(&Strategy::Bayesian, &space, problem, seed, parallel, count))
                    {
                        *identical.entry((budget, "slots")).or_insert(0) += 1;
                    }
                    let seen = regrets(&trials, problem.optimum);
                    for checkpoint in CHECKPOINTS.into_iter().filter(|c| from_the_run(*c, budget)) {
                        system.entry(checkpoint).or_default().push(seen[checkpoint - 1]);
                        // The run's own length is the offline run above.
                        let shorter;
                        let reference = if checkpoint == budget {
                            &offline_run
                        } else {
                            shorter =
                                in_batches(&Strategy::Bayesian, &space, problem, seed, parallel, checkpoint as u64);
                            &shorter
                        };
                        // A cell read from a longer run holds only if a run of its own length
                        // makes that run's first trials: checked offline, seed by seed.
                        if checkpoint < budget && tried(reference)[..] != tried(&offline_run)[..checkpoint] {
                            bail!(
                                "{} seed {seed}, {batch} at a time: a run of {checkpoint} trials is not the first \
                                 {checkpoint} of a run of {budget}; its cells need runs of their own",
                                problem.name
                            );
                        }
                        offline
                            .entry(checkpoint)
                            .or_default()
                            .push(regrets(reference, problem.optimum)[checkpoint - 1]);
                    }
                }
            }
            for checkpoint in CHECKPOINTS {
                let at = |runs: &BTreeMap<usize, Vec<f64>>| runs.get(&checkpoint).cloned().unwrap_or_default();
                let tpe_runs = tpe.get(&format!("{}|{batch}|{checkpoint}", problem.name));
                // Medians differ by chance; the test says when the difference is more than that.
                let against = tpe_runs.map_or("-".to_string(), |t| {
                    let (verdict, p) = versus(&at(&system), t);
                    if p < 0.01 { format!("{verdict} ({p:.0e})") } else { format!("{verdict} ({p:.2})") }
                });
                println!(
                    "{:<12} {:>5} {:>6}  {:<26} {:<26} {:<26} {:<15} {:>6}",
                    problem.name,
                    batch,
                    checkpoint,
                    formatted(quartiles(at(&system))),
                    formatted(quartiles(at(&offline))),
                    tpe_runs.map_or("-".to_string(), |t| formatted(quartiles(t.clone()))),
                    against,
                    if checkpoint == TRIALS { format!("{per_run:.2}") } else { String::new() }
                );
            }
            for budget in [SHORT_BUDGET, TRIALS] {
                let same = |how: &str| identical.get(&(budget, how)).copied().unwrap_or(0);
                let seeds = settings.seeds;
                if batch == 1 {
                    let same = same("batches");
                    println!(
                        "{:<12} {batch:>5} {budget:>6}  the same trials as the offline bench in {same} of {seeds} runs",
                        problem.name
                    );
                } else {
                    let (batches, slots) = (same("batches"), same("slots"));
                    println!(
                        "{:<12} {batch:>5} {budget:>6}  the same trials as in synchronous batches in {batches} of {seeds} runs, as slots filled one by one in {slots}",
                        problem.name
                    );
                }
            }
        }
    }
    Ok(())
}

fn tuning_request(
    name: &str,
    program: &str,
    ranges: &api::ParameterRanges,
    seed: u64,
    batch: usize,
    trials: usize,
) -> anyhow::Result<api::CreateHyperParameterTuningJobRequest> {
    let mut r = crate::agents::tuning_request(name, program, i32::try_from(trials)?, batch as i32)?;
    let config = r.hyper_parameter_tuning_job_config.as_mut().context("the example has a config")?;
    config.strategy = Some("Bayesian".into());
    config.random_seed = Some(i32::try_from(seed)?);
    config.parameter_ranges = Some(ranges.clone());
    config.training_job_early_stopping_type = Some("Off".into());
    config.hyper_parameter_tuning_job_objective = Some(api::HyperParameterTuningJobObjective {
        metric_name: Some("objective".into()),
        r#type: Some("Minimize".into()),
    });
    let definition = r.training_job_definition.as_mut().context("the example has a definition")?;
    definition.static_hyper_parameters = Some([(SEED.to_string(), seed.to_string())].into());
    definition.input_data_config = None;
    let algorithm = definition.algorithm_specification.as_mut().context("the example has an algorithm")?;
    algorithm.metric_definitions = Some(vec![api::MetricDefinition {
        name: Some("objective".into()),
        regex: Some("objective=([-+0-9.eE]+)".into()),
    }]);
    Ok(r)
}

/// The trials of a tuning job that has ended, in creation order (their names carry the index).
async fn trials_of(
    tuning: &mut HyperParameterTuningClient<trainyard_proto::client::Transport>,
    name: &str,
    problem: &Problem,
    count: usize,
) -> anyhow::Result<Vec<Trial>> {
    let list = tuning
        .list_training_jobs_for_hyper_parameter_tuning_job(pb::ListTrainingJobsForHyperParameterTuningJobRequest::from(
            api::ListTrainingJobsForHyperParameterTuningJobRequest {
                hyper_parameter_tuning_job_name: Some(name.to_string()),
                max_results: Some(100),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let mut summaries =
        api::ListTrainingJobsForHyperParameterTuningJobResponse::from(list).training_job_summaries.unwrap_or_default();
    summaries.sort_by(|a, b| a.training_job_name.cmp(&b.training_job_name));
    if summaries.len() != count {
        bail!("{name} ran {} trials, not {count}", summaries.len());
    }
    let mut trials = Vec::with_capacity(count);
    for s in summaries {
        let trial = s.training_job_name.clone().unwrap_or_default();
        let seen = s.final_hyper_parameter_tuning_job_objective_metric.and_then(|m| m.value).with_context(|| {
            format!("{trial} ({:?}) has no objective: {:?}", s.training_job_status, s.failure_reason)
        })?;
        let hyperparameters = s.tuned_hyper_parameters.unwrap_or_default();
        trials.push(Trial { truth: (problem.f)(&hyperparameters), seen, hyperparameters });
    }
    Ok(trials)
}

/// A cell: median [first quartile, third quartile].
fn formatted((q1, median, q3): (f64, f64, f64)) -> String {
    format!("{median:.4} [{q1:.4}, {q3:.4}]")
}

/// Optuna's TPE regrets by `problem|batch|trials` → every seed's, when `scripts/bench-tuner` has
/// cached them.
fn tpe_cache() -> BTreeMap<String, Vec<f64>> {
    let Ok(entries) = std::fs::read_dir(TPE_CACHE) else { return BTreeMap::new() };
    let newest = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("optuna-tpe-") && n.ends_with("-40-seeds-runs.json"))
        })
        .max();
    let Some(path) = newest else { return BTreeMap::new() };
    let Ok(text) = std::fs::read_to_string(&path) else { return BTreeMap::new() };
    serde_json::from_str(&text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::problems::{mann_whitney_p, versus};

    #[test]
    fn the_rank_test_agrees_with_scipy() {
        // p-values scipy.stats.mannwhitneyu(a, b, alternative="two-sided") gives for these.
        let a: Vec<f64> = (1..=12).map(f64::from).collect();
        let b: Vec<f64> = [3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 3, 5].map(f64::from).to_vec();
        assert!((mann_whitney_p(&a, &b) - 0.044_460_19).abs() < 1e-6, "{}", mann_whitney_p(&a, &b));
        let low: Vec<f64> = (0..40).map(|i| 0.1 * f64::from(i)).collect();
        let high: Vec<f64> = low.iter().map(|v| v + 1.2).collect();
        assert!((mann_whitney_p(&low, &high) - 0.000_101_105).abs() < 1e-7, "{}", mann_whitney_p(&low, &high));
        assert_eq!(versus(&low, &high).0, "ahead");
        assert_eq!(versus(&high, &low).0, "behind");
        // Shifted by less than the spread: not beyond chance.
        let near: Vec<f64> = low.iter().map(|v| v + 0.1).collect();
        assert_eq!(versus(&low, &near).0, "even");
        assert_eq!(versus(&low, &low), ("even", 1.0));
    }
}

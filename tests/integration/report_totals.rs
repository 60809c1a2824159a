//! Guarantee 4 as a property: whatever the ledger holds, a report's total equals the sum of its
//! rows to the last digit, under every grouping, and equals an independent integer
//! computation; the reconciliation accounts for every estimate; and splitting the period at a
//! midnight splits the totals exactly.
//!
//! Ledgers are built through the library (enqueue, mark_submitting, record, record_download,
//! record_no_charge, new_attempts, set_price) over up to 120 days, with prices of up to 12
//! decimal places changing along the way, outputs that differ from their inputs, and retries.

use codeformer_ledger::clock;
use codeformer_ledger::ledger::{
    Change, Event, GroupBy, JobState, JobUpdate, Ledger, NewJob, OutputRow, Report, ReportRow,
    SubmitRecord,
};
use codeformer_ledger::money::{self, DecimalSum, Price};
use codeformer_ledger::params::JobParams;
use proptest::prelude::*;
use rust_decimal::Decimal;

/// Money in units of 10^-18 USD: a rate has at most 12 decimal places and a megapixel 6.
const SCALE: u32 = 18;

fn units_to_decimal(units: i128) -> Decimal {
    Decimal::from_i128_with_scale(units, SCALE).normalize()
}

/// Cost of `pixels` at `rate` in 10^-18 USD, by integer arithmetic only.
fn cost_units(pixels: u128, rate: Decimal) -> i128 {
    let rate = rate.normalize();
    let per_mp = rate.mantissa() * 10i128.pow(12 - rate.scale());
    pixels as i128 * per_mp
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Planned,
    Held,
    Skipped,
    Queued,
    Processing,
    Completed {
        downloaded: bool,
        changed: bool,
        two_files: bool,
    },
    Failed,
    Error,
    Rejected,
    Uncertain,
    Stalled,
}

fn outcome(rng: &mut fastrand::Rng) -> Outcome {
    match rng.u32(0..100) {
        0..=4 => Outcome::Planned,
        5..=9 => Outcome::Held,
        10..=11 => Outcome::Skipped,
        12..=14 => Outcome::Queued,
        15..=16 => Outcome::Processing,
        17..=61 => Outcome::Completed {
            downloaded: rng.u32(0..10) > 0,
            changed: rng.u32(0..20) == 0,
            two_files: rng.u32(0..50) == 0,
        },
        62..=71 => Outcome::Failed,
        72..=79 => Outcome::Error,
        80..=84 => Outcome::Rejected,
        85..=91 => Outcome::Uncertain,
        _ => Outcome::Stalled,
    }
}

/// What the oracle expects of one attempt, in 10^-18 USD.
#[derive(Default)]
struct Expected {
    attempts: u64,
    estimated: i128,
    charged: i128,
    charge_unknown: i128,
    not_charged: i128,
    not_sent: i128,
    output_pixels: u128,
    /// Uncertain attempts that were sent again.
    resent_uncertain: u64,
}

impl Expected {
    fn attempt(&mut self, outcome: Outcome, estimate: i128, charge: Option<(i128, u128)>) {
        self.attempts += 1;
        self.estimated += estimate;
        match outcome {
            Outcome::Planned | Outcome::Held | Outcome::Skipped => self.not_sent += estimate,
            Outcome::Error | Outcome::Rejected => self.not_charged += estimate,
            _ => match charge {
                Some((c, pixels)) => {
                    self.charged += c;
                    self.output_pixels += pixels;
                }
                None => self.charge_unknown += estimate,
            },
        }
    }
}

struct Job {
    id: i64,
    size: Option<(u32, u32)>,
    upscale: u32,
    outcome: Outcome,
}

fn at(day: u32) -> chrono::DateTime<chrono::Utc> {
    let start = clock::parse_remote("2026-01-01T00:00:00Z").unwrap();
    // Every third day at exactly midnight, to test the `until` bound's exclusiveness.
    let hours = if day.is_multiple_of(3) { 0 } else { 13 };
    start + chrono::Duration::days(day.into()) + chrono::Duration::hours(hours)
}

fn new_job(rng: &mut fastrand::Rng, i: usize) -> NewJob {
    let mut params = JobParams::new(format!("https://x.test/{i}.png"));
    params.upscale = rng.u32(1..=8);
    let mut job = NewJob::new(params);
    if rng.u32(0..20) > 0 {
        let side = |rng: &mut fastrand::Rng| match rng.u32(0..100) {
            0 => 65535,
            1..=3 => 1,
            _ => rng.u32(1..=6000),
        };
        job.size = Some((side(rng), side(rng)));
        job.size_source = Some("given");
    }
    job.batch = [None, Some("alpha"), Some("beta")][rng.usize(0..3)].map(String::from);
    if rng.bool() {
        job.tags
            .push(("client".into(), format!("c{}", rng.u32(0..4))));
    }
    job
}

/// Builds a random ledger; returns it and what its totals must be.
fn build(dir: &std::path::Path, jobs: usize, days: u32, seed: u64) -> (Ledger, Expected) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ledger = Ledger::open(&dir.join("ledger.db")).unwrap();
    let mut expected = Expected::default();
    let mut rate = money::DEFAULT_PER_MEGAPIXEL;
    let per_day = jobs.div_ceil(days as usize).max(1);
    let mut made = 0;
    for day in 0..days {
        clock::pin_thread(Some(at(day)));
        if rng.u32(0..8) == 0 {
            rate = Decimal::from_i128_with_scale(rng.i128(1..=10_000_000_000), 12).normalize();
            let price = Price {
                per_megapixel: rate,
                effective_from: clock::now(),
                ..Price::default_rate()
            };
            ledger.set_price(&price, None).unwrap();
        }
        let n = per_day.min(jobs - made);
        let new: Vec<NewJob> = (made..made + n).map(|i| new_job(&mut rng, i)).collect();
        made += n;
        let ids = ledger.enqueue(&new).unwrap();
        let batch: Vec<Job> = new
            .iter()
            .zip(ids)
            .map(|(j, e)| Job {
                id: e.id,
                size: j.size,
                upscale: j.params.upscale,
                outcome: outcome(&mut rng),
            })
            .collect();
        let charges = play(&mut ledger, &batch, 1, rate);
        for (job, charge) in batch.iter().zip(charges) {
            expected.attempt(job.outcome, estimate_units(job, rate), charge);
            if job.outcome == Outcome::Uncertain {
                expected.resent_uncertain += 1;
            }
        }
    }
    // A retry round: every failed and uncertain job gets a second attempt, which completes.
    clock::pin_thread(Some(at(days)));
    let retried = ledger
        .new_attempts(&[JobState::Failed, JobState::Uncertain], None, "test")
        .unwrap();
    let retry_ids: Vec<i64> = {
        let mut ids = Vec::new();
        ledger
            .for_each_job(&Default::default(), |j| {
                if j.attempt == 2 {
                    ids.push(j.id);
                }
                Ok(())
            })
            .unwrap();
        ids
    };
    assert_eq!(retry_ids.len(), retried);
    let retries: Vec<Job> = retry_ids
        .into_iter()
        .map(|id| {
            let row = ledger.job(id).unwrap().unwrap();
            Job {
                id,
                size: row.input_size(),
                upscale: row.upscale,
                outcome: Outcome::Completed {
                    downloaded: true,
                    changed: false,
                    two_files: false,
                },
            }
        })
        .collect();
    let charges = play(&mut ledger, &retries, 2, rate);
    for (job, charge) in retries.iter().zip(charges) {
        expected.attempt(job.outcome, estimate_units(job, rate), charge);
    }
    clock::pin_thread(None);
    (ledger, expected)
}

fn estimate_units(job: &Job, rate: Decimal) -> i128 {
    job.size
        .map(|(w, h)| {
            let (ow, oh) = money::output_size(w, h, job.upscale);
            cost_units(u128::from(ow) * u128::from(oh), rate)
        })
        .unwrap_or(0)
}

/// The state an outcome leaves its attempt in, and whether that state is final.
fn state_of(outcome: Outcome) -> Option<(JobState, bool)> {
    Some(match outcome {
        Outcome::Planned => return None,
        Outcome::Held => (JobState::Held, false),
        Outcome::Skipped => (JobState::Skipped, true),
        Outcome::Queued => (JobState::Queued, false),
        Outcome::Processing => (JobState::Processing, false),
        Outcome::Completed { .. } => (JobState::Completed, true),
        Outcome::Failed => (JobState::Failed, true),
        Outcome::Error => (JobState::Error, true),
        Outcome::Rejected => (JobState::Rejected, true),
        Outcome::Uncertain => (JobState::Uncertain, false),
        Outcome::Stalled => (JobState::Stalled, true),
    })
}

/// Drives attempts to their outcomes through the ledger's record functions, as the engine
/// does (intents in one transaction, answers in one, then downloads and no-charges one by
/// one); returns each charge and output pixels when one is recorded.
fn play(
    ledger: &mut Ledger,
    jobs: &[Job],
    attempt: i64,
    rate: Decimal,
) -> Vec<Option<(i128, u128)>> {
    let price = Price {
        per_megapixel: rate,
        ..Price::default_rate()
    };
    let sent = |j: &&Job| {
        !matches!(
            j.outcome,
            Outcome::Planned | Outcome::Held | Outcome::Skipped
        )
    };
    let intents: Vec<SubmitRecord> = jobs
        .iter()
        .filter(sent)
        .map(|job| SubmitRecord {
            job_id: job.id,
            attempt,
            body: "{}".into(),
            price: rate,
            estimate: job.size.map(|(w, h)| {
                let (ow, oh) = money::output_size(w, h, job.upscale);
                price.cost(ow, oh)
            }),
        })
        .collect();
    ledger.mark_submitting(&intents).unwrap();
    let changes = jobs
        .iter()
        .filter_map(|job| {
            let (state, finished) = state_of(job.outcome)?;
            let change = Change {
                state: Some(state),
                finished,
                ..Change::default()
            };
            let event = Event::new(Some(job.id), Some(attempt), "state").detail(state.as_str());
            Some(JobUpdate::new(job.id, attempt, change, event))
        })
        .collect();
    ledger.record(changes).unwrap();
    jobs.iter()
        .map(|job| match job.outcome {
            Outcome::Error | Outcome::Rejected => {
                ledger.record_no_charge(job.id, attempt, "test").unwrap();
                None
            }
            Outcome::Completed {
                downloaded: true,
                changed,
                two_files,
            } => Some(download(ledger, job, attempt, rate, changed, two_files)),
            _ => None,
        })
        .collect()
}

fn download(
    ledger: &mut Ledger,
    job: &Job,
    attempt: i64,
    rate: Decimal,
    changed: bool,
    two_files: bool,
) -> (i128, u128) {
    // Without a known input size the output is whatever the gateway made.
    let (w, h) = job.size.unwrap_or((640, 480));
    let (mut ow, oh) = money::output_size(w, h, job.upscale);
    if changed {
        ow += 2;
    }
    let file = |idx| OutputRow {
        attempt,
        idx,
        url: format!("https://cdn.test/{}/{attempt}/{idx}.png", job.id),
        path: format!("/out/{}-{attempt}-{idx}.png", job.id),
        bytes: 1,
        sha256: "0".repeat(64),
        width: Some(ow as u32),
        height: Some(oh as u32),
    };
    let files: Vec<OutputRow> = (0..if two_files { 2 } else { 1 }).map(file).collect();
    ledger
        .record_download(job.id, attempt, &files, None)
        .unwrap();
    let pixels = u128::from(ow) * u128::from(oh) * files.len() as u128;
    (cost_units(pixels, rate), pixels)
}

fn sum_rows(rows: &[ReportRow]) -> ReportRow {
    let mut counts = ReportRow::default();
    let mut money = [(); 4].map(|_| DecimalSum::new());
    for r in rows {
        counts.jobs += r.jobs;
        counts.completed += r.completed;
        counts.failed += r.failed;
        counts.errored += r.errored;
        counts.rejected += r.rejected;
        counts.uncertain += r.uncertain;
        counts.stalled += r.stalled;
        for (sum, v) in money.iter_mut().zip([
            r.output_megapixels,
            r.estimated,
            r.charged,
            r.charge_unknown,
        ]) {
            sum.add(v).unwrap();
        }
    }
    counts.group = "total".into();
    counts.output_megapixels = money[0].total();
    counts.estimated = money[1].total();
    counts.charged = money[2].total();
    counts.charge_unknown = money[3].total();
    counts
}

fn check(ledger: &Ledger, expected: &Expected, days: u32) {
    let groupings = [
        GroupBy::Day,
        GroupBy::Month,
        GroupBy::Batch,
        GroupBy::State,
        GroupBy::Tag("client".into()),
    ];
    let mut first: Option<Report> = None;
    for by in &groupings {
        let report = ledger.report(None, None, by).unwrap();
        assert_eq!(sum_rows(&report.rows), report.total, "grouped by {by}");
        if let Some(first) = &first {
            assert_eq!(first.total, report.total, "{by}");
            assert_eq!(first.reconciliation, report.reconciliation, "{by}");
        }
        first = Some(report);
    }
    let report = first.unwrap();
    let t = &report.total;
    assert_eq!(t.jobs, expected.attempts);
    assert_eq!(report.possible_double_charges, expected.resent_uncertain);
    assert_eq!(t.estimated, units_to_decimal(expected.estimated));
    assert_eq!(t.charged, units_to_decimal(expected.charged));
    assert_eq!(t.charge_unknown, units_to_decimal(expected.charge_unknown));
    let r = &report.reconciliation;
    assert_eq!(r.not_charged, units_to_decimal(expected.not_charged));
    assert_eq!(r.not_sent, units_to_decimal(expected.not_sent));
    assert_eq!(
        t.output_megapixels,
        money::megapixels(expected.output_pixels as u64, 1)
    );
    // The reconciliation accounts for every estimate, exactly.
    let mut listed = DecimalSum::new();
    for d in &r.attempts {
        listed.add(d.difference).unwrap();
    }
    assert_eq!(listed.total(), r.difference.normalize());
    let mut accounted = DecimalSum::new();
    for v in [
        t.charged,
        t.charge_unknown,
        r.not_charged,
        r.not_sent,
        -r.difference,
    ] {
        accounted.add(v).unwrap();
    }
    assert_eq!(accounted.total(), t.estimated.normalize());
    // JSON carries the same exact amounts.
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "estimated",
        "charged",
        "charge_unknown",
        "output_megapixels",
    ] {
        let text = json["total"][field].as_str().unwrap();
        assert_eq!(
            money::parse_exact(text).unwrap(),
            t_field(t, field),
            "{field}"
        );
    }
    // Splitting the period at a midnight splits every total exactly.
    let cut = clock::stamp(at((days / 2) / 3 * 3));
    let before = ledger.report(None, Some(&cut), &GroupBy::Day).unwrap();
    let after = ledger.report(Some(&cut), None, &GroupBy::Day).unwrap();
    assert_eq!(sum_rows(&[before.total, after.total]), report.total);
}

fn t_field(t: &ReportRow, field: &str) -> Decimal {
    match field {
        "estimated" => t.estimated,
        "charged" => t.charged,
        "charge_unknown" => t.charge_unknown,
        _ => t.output_megapixels,
    }
}

/// A temporary folder, in memory where the system has one: the property is about sums, not
/// about the disk, and a hundred thousand small transactions on a slow disk take minutes.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn report_totals_are_the_sums_of_their_rows(
        jobs in 0usize..1_500,
        days in 1u32..=120,
        seed in any::<u64>(),
    ) {
        let dir = scratch();
        let (ledger, expected) = build(dir.path(), jobs, days, seed);
        check(&ledger, &expected, days);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1, ..ProptestConfig::default() })]

    /// The same over one large ledger.
    #[test]
    fn report_totals_hold_over_a_hundred_thousand_jobs(
        jobs in 90_000usize..=100_000,
        days in 30u32..=120,
        seed in any::<u64>(),
    ) {
        let dir = scratch();
        let (ledger, expected) = build(dir.path(), jobs, days, seed);
        check(&ledger, &expected, days);
    }
}

use super::*;
use proptest::prelude::*;

/// The table between these markers in `docs/architecture.md` is [`table`]'s output.
const DOC: &str = include_str!("../../docs/architecture.md");
const START: &str = "<!-- state-table:start -->\n";
const END: &str = "<!-- state-table:end -->";

/// A new variant makes this match fail to compile: add it to `all()` and the table.
fn listed(learned: Learned) -> bool {
    match learned {
        Learned::Submit(a) => SubmitAnswer::ALL.contains(&a),
        Learned::Status(_, r) => Reported::ALL.contains(&r),
        Learned::PollFailed
        | Learned::Downloaded
        | Learned::DownloadFailed
        | Learned::HookSkipped
        | Learned::HookFailed
        | Learned::OverBudget
        | Learned::Killed
        | Learned::Deadline
        | Learned::Forgotten => true,
    }
}

#[test]
fn every_input_and_every_state_is_in_the_table() {
    let all = Learned::all();
    assert_eq!(
        all.len(),
        SubmitAnswer::ALL.len() + 2 * Reported::ALL.len() + 9
    );
    assert!(all.iter().all(|l| listed(*l)));
    let states: std::collections::HashSet<JobState> = At::all().iter().map(|a| a.state).collect();
    assert_eq!(states.len(), JobState::ALL.len());
}

/// Every state × every input: the steps not ignored are the documented table, and an
/// ignored one changes nothing.
#[test]
fn the_state_table_is_the_documented_one() {
    for at in At::all() {
        for learned in Learned::all() {
            let s = step(at, learned);
            if s.verdict == Verdict::Ignored {
                assert_eq!(
                    (s.next, s.work, s.charge, s.finished),
                    (at.state, Work::Keep, Charge::None, false),
                    "{at} × {learned}"
                );
            }
            if s.verdict != Verdict::Applied {
                assert_eq!(s.next, at.state, "{at} × {learned}");
                assert_eq!(s.charge, Charge::None, "{at} × {learned}");
            }
        }
    }
    let begin = DOC
        .find(START)
        .expect("docs/architecture.md has the table's start marker");
    let end = DOC
        .find(END)
        .expect("docs/architecture.md has the table's end marker");
    let documented = &DOC[begin + START.len()..end];
    let rendered = table();
    assert!(
        documented.trim() == rendered.trim(),
        "docs/architecture.md's state table differs from the code; replace it with:\n{rendered}"
    );
}

#[test]
fn some_steps_read_as_the_design_says() {
    let at = |s| At::new(s, false);
    let s = step(
        at(JobState::Submitting),
        Learned::Submit(SubmitAnswer::Queued),
    );
    assert_eq!((s.next, s.work), (JobState::Queued, Work::Poll));
    let s = step(
        at(JobState::Processing),
        Learned::Status(Via::Poll, Reported::Completed),
    );
    assert_eq!(
        (s.next, s.work, s.finished),
        (JobState::Completed, Work::Download, true)
    );
    let s = step(At::new(JobState::Completed, true), Learned::Downloaded);
    assert_eq!((s.work, s.charge), (Work::Finish, Charge::FromOutputs));
    // A callback never moves a job backwards, nor over a final state.
    let s = step(
        at(JobState::Processing),
        Learned::Status(Via::Callback, Reported::Queued),
    );
    assert_eq!((s.next, s.verdict), (JobState::Processing, Verdict::Stale));
    let s = step(
        at(JobState::Failed),
        Learned::Status(Via::Callback, Reported::Completed),
    );
    assert_eq!(s.verdict, Verdict::Stale);
    // A final callback is a hint: it only makes the status call due now, for a stalled job
    // too, whose end then comes from that call's answer.
    for at_state in [JobState::Queued, JobState::Processing, JobState::Stalled] {
        let s = step(
            at(at_state),
            Learned::Status(Via::Callback, Reported::Completed),
        );
        assert_eq!(
            (s.next, s.verdict, s.work, s.charge),
            (at_state, Verdict::Hint, Work::Confirm, Charge::None)
        );
    }
    let s = step(
        at(JobState::Stalled),
        Learned::Status(Via::Poll, Reported::Error),
    );
    assert_eq!((s.next, s.charge), (JobState::Error, Charge::Free));
    // An uncertain attempt whose ghost called back follows the gateway's answer.
    let s = step(
        at(JobState::Uncertain),
        Learned::Status(Via::Poll, Reported::Processing),
    );
    assert_eq!((s.next, s.work), (JobState::Processing, Work::Poll));
}

fn any_learned() -> impl Strategy<Value = Learned> {
    let all = Learned::all();
    (0..all.len()).prop_map(move |i| all[i])
}

/// What the engine does between steps: it sends a sendable job (the intent makes it
/// `submitting`); `None` for any other news.
#[derive(Debug, Clone)]
enum Action {
    Learn(Learned),
    Send,
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => any_learned().prop_map(Action::Learn),
        1 => Just(Action::Send),
    ]
}

proptest! {
    /// Random news, in any order and repeated, never moves a job backwards or off a final
    /// state, and records each attempt's charge at most once.
    #[test]
    fn a_job_never_moves_backwards_and_is_charged_once(
        actions in proptest::collection::vec(any_action(), 1..60)
    ) {
        let mut at = At::new(JobState::Planned, false);
        let mut charges = 0;
        for action in actions {
            let learned = match action {
                Action::Send => {
                    if matches!(at.state, JobState::Planned | JobState::Held) {
                        at = At::new(JobState::Submitting, false);
                    }
                    continue;
                }
                Action::Learn(learned) => learned,
            };
            let s = step(at, learned);
            prop_assert!(progress(s.next) >= progress(at.state), "{at} × {learned} -> {}", s.next);
            // Stalled is final but for the status call a callback asks for, which may bring
            // its end (a final state, never back to polling).
            if at.state.is_final() && at.state != JobState::Stalled {
                prop_assert_eq!(s.next, at.state, "{} × {} left a final state", at, learned);
            }
            if at.state == JobState::Stalled {
                prop_assert!(s.next.is_final(), "{} × {} left stalled for {}", at, learned, s.next);
            }
            // A callback is a hint: it never ends a job, downloads or charges.
            if let Learned::Status(Via::Callback, _) = learned {
                prop_assert!(!s.next.is_final() || s.next == at.state, "{} × {} ended it", at, learned);
                prop_assert_eq!(s.charge, Charge::None);
                prop_assert!(s.work != Work::Download && s.work != Work::Finish);
            }
            if s.charge != Charge::None {
                charges += 1;
            }
            prop_assert!(charges <= 1, "{at} × {learned} charged a second time");
            let owes = match s.work {
                Work::Download | Work::RetryDownload => true,
                Work::Finish => false,
                _ => at.owes_download,
            };
            at = At::new(s.next, owes);
        }
    }
}

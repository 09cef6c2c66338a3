//! What clients were answered while the brokers were failing: the figures of every fault window
//! (write attempts answered 503, how long writes waited, reads), and the `quorum-loss`
//! invariant for the windows in which two of three brokers were down.
//!
//! Times are Unix milliseconds: the load generator's (when it sent an attempt and when the
//! answer came) and the fault injector's (when a fault began and when it was repaired), both
//! from this machine's clock.

use std::collections::{BTreeMap, HashMap};

use super::{FaultWindow, Inputs, Invariant, Report};
use crate::journal::Entry;

/// The fault windows in which two of three brokers were down.
pub const QUORUM_LOSS: &str = "quorum-loss";
/// A broker being started again, until the cluster lists it (not a fault: how long it took).
pub const REJOIN: &str = "rejoin";
/// After the second broker is gone, a write acknowledged before it went may still be answered:
/// its record was on two brokers, and the client's answer was on its way.
pub const GRACE_MS: i64 = 2_000;
/// How soon after a broker returns a new write must be acknowledged again (the load's clients
/// give up on a write after 90 s of retries).
pub const RESUME_LIMIT_MS: i64 = 120_000;
/// How long after a fault's repair its aftermath still counts towards its figures.
const AFTERMATH_MS: i64 = 30_000;

/// One write as the client saw it: every attempt with its key.
#[derive(Debug, Default)]
struct Write<'a> {
    op: &'a str,
    /// When its first attempt was sent.
    first_sent: i64,
    /// When it was first answered 2xx, if it was.
    first_ack: Option<i64>,
}

/// Attempts of writes and read probes, from the journal.
#[derive(Debug, Default)]
struct Answers<'a> {
    /// (sent, answered, status) of every write attempt.
    attempts: Vec<(i64, i64, Option<u16>)>,
    /// By (subject, key).
    writes: HashMap<(&'a str, &'a str), Write<'a>>,
    reads: Vec<(i64, Option<u16>)>,
}

impl<'a> Answers<'a> {
    fn from_journal(journal: &'a [Entry]) -> Self {
        let mut answers = Self::default();
        for entry in journal {
            match entry {
                Entry::Attempt {
                    op,
                    subject,
                    idempotency_key,
                    sent_ms,
                    answered_ms,
                    status,
                } => {
                    answers.attempts.push((*sent_ms, *answered_ms, *status));
                    let write = answers
                        .writes
                        .entry((subject.as_str(), idempotency_key.as_str()))
                        .or_insert_with(|| Write {
                            op,
                            first_sent: *sent_ms,
                            first_ack: None,
                        });
                    write.first_sent = write.first_sent.min(*sent_ms);
                    if status.is_some_and(|status| (200..300).contains(&status)) {
                        write.first_ack = Some(
                            write
                                .first_ack
                                .map_or(*answered_ms, |first| first.min(*answered_ms)),
                        );
                    }
                }
                Entry::Read { at_ms, status } => answers.reads.push((*at_ms, *status)),
                _ => {}
            }
        }
        answers
    }

    /// Acknowledgement times of writes, sorted: when each write was first answered 2xx.
    fn acks(&self) -> Vec<i64> {
        let mut acks: Vec<i64> = self.writes.values().filter_map(|w| w.first_ack).collect();
        acks.sort_unstable();
        acks
    }

    /// Attempts answered 503 inside any of `spans` (each counted once).
    fn unavailable(&self, spans: &[(i64, i64)]) -> usize {
        self.attempts
            .iter()
            .filter(|(_, answered, status)| {
                *status == Some(503)
                    && spans
                        .iter()
                        .any(|(from, to)| (*from..=*to).contains(answered))
            })
            .count()
    }

    /// The longest a write waited for its acknowledgement (first attempt to first 2xx), among
    /// those waiting at some moment between `from` and `to`.
    fn longest_wait(&self, from: i64, to: i64) -> Option<(i64, &'a str)> {
        self.writes
            .values()
            .filter_map(|w| w.first_ack.map(|ack| (w.first_sent, ack, w.op)))
            .filter(|(sent, ack, _)| *sent <= to && *ack >= from)
            .map(|(sent, ack, op)| (ack - sent, op))
            .max()
    }
}

/// The longest time between two acknowledgements in `acks` (sorted) that overlaps
/// `from..=to`: how long no write at all was acknowledged.
fn longest_silence(acks: &[i64], from: i64, to: i64) -> Option<i64> {
    acks.windows(2)
        .filter(|pair| pair[0] <= to && pair[1] >= from)
        .map(|pair| pair[1] - pair[0])
        .max()
}

fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{} s", ms / 1000, (ms % 1000 + 50) / 100 % 10)
}

/// The figures of the write attempts and of each kind of fault window.
pub(super) fn figures(inputs: &Inputs, report: &mut Report) {
    let answers = Answers::from_journal(&inputs.journal);
    if answers.attempts.is_empty() {
        return;
    }
    let mut by_class: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, status) in &answers.attempts {
        let class = match status {
            None => "no answer".to_owned(),
            Some(503) => "503".to_owned(),
            Some(status) => format!("{}xx", status / 100),
        };
        *by_class.entry(class).or_default() += 1;
    }
    let classes: Vec<String> = by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
    report.figure(
        "write attempts",
        format!("{} ({})", answers.attempts.len(), classes.join(", ")),
    );
    let mut waits: Vec<i64> = answers
        .writes
        .values()
        .filter_map(|w| w.first_ack.map(|ack| ack - w.first_sent))
        .collect();
    waits.sort_unstable();
    if let (Some(max), false) = (waits.last(), waits.is_empty()) {
        // The value at `percent` of the sorted waits (nearest rank).
        let at = |percent: usize| waits[(waits.len() - 1) * percent / 100];
        report.figure(
            "write waits (first attempt to 2xx)",
            format!(
                "p50 {}, p99 {}, max {} over {} writes",
                seconds(at(50)),
                seconds(at(99)),
                seconds(*max),
                waits.len()
            ),
        );
    }
    let acks = answers.acks();
    if let (Some(first), Some(last)) = (acks.first(), acks.last()) {
        report.figure(
            "longest time without an acknowledged write",
            longest_silence(&acks, *first, *last).map_or_else(|| "-".to_owned(), seconds),
        );
    }
    let reads_ok = answers
        .reads
        .iter()
        .filter(|(_, s)| *s == Some(200))
        .count();
    report.figure(
        "read probes answered 200",
        format!("{reads_ok} of {}", answers.reads.len()),
    );
    let mut rejoins: Vec<i64> = inputs
        .windows
        .iter()
        .filter(|w| w.kind == REJOIN)
        .map(|w| w.end_ms - w.begin_ms)
        .collect();
    rejoins.sort_unstable();
    if let (Some(max), false) = (rejoins.last(), rejoins.is_empty()) {
        report.figure(
            "broker starts (until listed)",
            format!(
                "{}, p50 {}, max {}",
                rejoins.len(),
                seconds(rejoins[rejoins.len() / 2]),
                seconds(*max)
            ),
        );
    }
    let mut kinds: BTreeMap<&str, Vec<&FaultWindow>> = BTreeMap::new();
    for window in inputs.windows.iter().filter(|w| w.kind != REJOIN) {
        kinds.entry(window.kind.as_str()).or_default().push(window);
    }
    for (kind, windows) in kinds {
        let spans: Vec<(i64, i64)> = windows
            .iter()
            .map(|w| (w.begin_ms, w.end_ms + AFTERMATH_MS))
            .collect();
        let unavailable = answers.unavailable(&spans);
        let mut wait: Option<(i64, &str)> = None;
        let mut silence: Option<i64> = None;
        let mut lasted = 0;
        for window in &windows {
            wait = wait.max(answers.longest_wait(window.begin_ms, window.end_ms));
            silence = silence.max(longest_silence(&acks, window.begin_ms, window.end_ms));
            lasted += window.end_ms - window.begin_ms;
        }
        report.figure(
            &format!("  outage {kind}"),
            format!(
                "{}× ({} in all): {unavailable} answers 503 (to 30 s after), longest write wait {}, longest without an acknowledged write {}",
                windows.len(),
                seconds(lasted),
                wait.map_or_else(|| "-".to_owned(), |(ms, op)| format!("{} ({op})", seconds(ms))),
                silence.map_or_else(|| "-".to_owned(), seconds),
            ),
        );
    }
}

/// While two of three brokers are down no write can reach `min.insync.replicas` (2): writes
/// must be answered 503 (or refused with a 4xx before reaching the log) and none newly
/// acknowledged; reads (the query-api, from PostgreSQL) must keep answering; and once a broker
/// is back, writes must be acknowledged again without anyone's help.
pub(super) fn quorum_loss(inputs: &Inputs, report: &mut Report) {
    let invariant = Invariant::QuorumLoss;
    let answers = Answers::from_journal(&inputs.journal);
    let windows = inputs.windows.iter().filter(|w| w.kind == QUORUM_LOSS);
    for (n, window) in windows.enumerate() {
        let (begin, end) = (window.begin_ms, window.end_ms);
        let what = format!("while {} ({})", window.detail, seconds(end - begin));
        let strict = begin + GRACE_MS;
        // Newly acknowledged writes: their first 2xx came inside the window.
        for ((subject, key), write) in &answers.writes {
            if let Some(ack) = write.first_ack
                && (strict..=end).contains(&ack)
            {
                report.violation(
                    invariant,
                    format!(
                        "{} of {subject} (key {key:?}) was acknowledged {} after the second broker went down, {what}",
                        write.op,
                        seconds(ack - begin)
                    ),
                );
            }
        }
        let mut in_window = 0;
        let mut refused = 0;
        for (_, answered, status) in &answers.attempts {
            if !(strict..=end).contains(answered) {
                continue;
            }
            in_window += 1;
            match status {
                Some(503) => refused += 1,
                // A 4xx needs no broker (bad input, unknown id); a 2xx is a replay of a write
                // acknowledged before (a new one is reported above); no answer is counted.
                Some(200..=499) | None => {}
                Some(status) => report.violation(
                    invariant,
                    format!("a write was answered {status} instead of 503 {what}"),
                ),
            }
        }
        if in_window > 0 && refused == 0 {
            report.violation(
                invariant,
                format!("{in_window} write attempts were answered {what}, none with 503"),
            );
        }
        let reads: Vec<_> = answers
            .reads
            .iter()
            .filter(|(at, _)| (begin..=end).contains(at))
            .collect();
        let failed: Vec<_> = reads.iter().filter(|(_, s)| *s != Some(200)).collect();
        if !failed.is_empty() {
            report.violation(
                invariant,
                format!(
                    "{} of {} reads failed {what} (first: {:?} {} in)",
                    failed.len(),
                    reads.len(),
                    failed[0].1,
                    seconds(failed[0].0 - begin)
                ),
            );
        }
        // Writing resumes: the first write acknowledged after the window, if anyone still wrote.
        let resumed = answers
            .writes
            .values()
            .filter_map(|w| w.first_ack)
            .filter(|ack| *ack > end)
            .min();
        let tried_after = answers.attempts.iter().any(|(sent, _, _)| *sent > end);
        // The broker started at the end of the window, and when the cluster listed it again.
        let rejoined = inputs
            .windows
            .iter()
            .find(|w| w.kind == REJOIN && (w.begin_ms - end).abs() <= 2_000)
            .map(|w| w.end_ms);
        match resumed {
            Some(ack) if ack - end <= RESUME_LIMIT_MS => report.figure(
                &format!("  quorum loss {}: writes resumed", n + 1),
                format!(
                    "{} after a broker was started again{}",
                    seconds(ack - end),
                    rejoined.map_or_else(String::new, |listed| format!(
                        " (the cluster listed it {} after its start)",
                        seconds(listed - end)
                    ))
                ),
            ),
            Some(ack) => report.violation(
                invariant,
                format!(
                    "writes were acknowledged again only {} after a broker returned, {what}",
                    seconds(ack - end)
                ),
            ),
            None if tried_after => report.violation(
                invariant,
                format!("no write was acknowledged again after a broker returned, {what}"),
            ),
            None => {}
        }
        report.checked(invariant, in_window + reads.len() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(key: &str, sent: i64, answered: i64, status: Option<u16>) -> Entry {
        Entry::Attempt {
            op: "request_booking".into(),
            subject: "director".into(),
            idempotency_key: key.into(),
            sent_ms: sent,
            answered_ms: answered,
            status,
        }
    }

    fn read(at: i64, status: Option<u16>) -> Entry {
        Entry::Read { at_ms: at, status }
    }

    /// Two brokers down from 10 s to 30 s: writes refused, a replay answered, reads fine,
    /// writes back 5 s after.
    fn outage() -> Inputs {
        Inputs {
            journal: vec![
                attempt("a", 9_000, 9_100, Some(202)),
                attempt("b", 11_000, 26_000, Some(503)),
                // A replay of "a", acknowledged before the window.
                attempt("a", 15_000, 15_010, Some(202)),
                attempt("c", 16_000, 16_005, Some(422)),
                read(12_000, Some(200)),
                read(29_000, Some(200)),
                attempt("b", 31_000, 35_000, Some(202)),
            ],
            windows: vec![FaultWindow {
                kind: QUORUM_LOSS.into(),
                begin_ms: 10_000,
                end_ms: 30_000,
                detail: "nodes 1 and 2 were down".into(),
            }],
            ..Inputs::default()
        }
    }

    fn check(inputs: &Inputs) -> Report {
        let mut report = Report::default();
        quorum_loss(inputs, &mut report);
        figures(inputs, &mut report);
        report
    }

    #[test]
    fn refused_writes_answered_reads_and_a_resumption_pass() {
        let report = check(&outage());
        assert!(report.passed(), "{}", report.render(10));
        assert!(report.checked[&Invariant::QuorumLoss] > 0);
        assert_eq!(
            report.figures["  quorum loss 1: writes resumed"],
            "5.0 s after a broker was started again"
        );
        assert!(
            report.figures["  outage quorum-loss"].contains("1 answers 503"),
            "{:?}",
            report.figures
        );
    }

    #[test]
    fn a_write_first_acknowledged_without_a_quorum_is_reported() {
        let mut inputs = outage();
        inputs.journal.push(attempt("d", 20_000, 20_050, Some(201)));
        let report = check(&inputs);
        assert_eq!(
            report.count(Invariant::QuorumLoss),
            1,
            "{}",
            report.render(10)
        );
    }

    #[test]
    fn an_acknowledgement_within_the_grace_after_the_second_broker_went_is_not_reported() {
        let mut inputs = outage();
        inputs.journal.push(attempt("d", 9_990, 10_500, Some(202)));
        assert!(check(&inputs).passed());
    }

    #[test]
    fn a_failed_read_during_the_outage_is_reported() {
        let mut inputs = outage();
        inputs.journal.push(read(20_000, Some(503)));
        assert_eq!(check(&inputs).count(Invariant::QuorumLoss), 1);
    }

    #[test]
    fn a_write_answered_with_another_5xx_is_reported() {
        let mut inputs = outage();
        inputs.journal.push(attempt("e", 20_000, 20_001, Some(500)));
        assert_eq!(check(&inputs).count(Invariant::QuorumLoss), 1);
    }

    #[test]
    fn writes_that_never_resume_are_reported() {
        let mut inputs = outage();
        inputs.journal.pop();
        inputs.journal.push(attempt("b", 31_000, 46_000, Some(503)));
        let report = check(&inputs);
        assert_eq!(
            report.count(Invariant::QuorumLoss),
            1,
            "{}",
            report.render(10)
        );
    }

    #[test]
    fn the_longest_silence_is_the_longest_gap_between_acknowledgements() {
        assert_eq!(
            longest_silence(&[0, 1_000, 9_000, 9_500], 0, 10_000),
            Some(8_000)
        );
        assert_eq!(
            longest_silence(&[0, 1_000, 9_000, 9_500], 9_200, 10_000),
            Some(500)
        );
        assert_eq!(longest_silence(&[5], 0, 10), None);
    }
}

//! Chain verification across the current and rotated files.
//!
//! A torn fragment (bytes a crash left unfinished) is accepted only when the very next line is an
//! `audit.recovered` record naming its exact offset, length and SHA-256, and is then reported as a warning.
//! Everything else that is not a record continuing the chain is the first bad record.

use std::fmt;
use std::path::{Path, PathBuf};

use super::files::{self, RawLine, Seal};
use super::record::{FIRST_SEQ, GENESIS_PREV, ParseError, Record, parse_line, sha256};
use super::{AuditError, Kind};

/// How strict [`verify`] is.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a chain whose first record is not the genesis record (older rotated files were removed on
    /// purpose); reported as a warning instead of a failure.
    pub allow_partial: bool,
    /// A seal file to check the newest record and the end of the log against. A missing file is a warning.
    pub seal: Option<PathBuf>,
}

/// The result of a verification. `problem` is the first bad record; `None` means the chain is intact.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Hash of the newest record's line: keep a copy elsewhere to anchor the chain.
    pub last_sha256: Option<String>,
    /// The seq the seal named, when a seal was checked.
    pub sealed_seq: Option<u64>,
    pub warnings: Vec<Finding>,
    pub problem: Option<Finding>,
    /// Every recovery the log recorded (torn tail, records lost from the end, a changed last record),
    /// oldest first, with the acknowledgement that covers it, if any.
    pub recoveries: Vec<Recovery>,
}

impl VerifyReport {
    /// The chain itself is unbroken (recoveries are recorded links of the chain, so they do not count
    /// here; see [`VerifyReport::unacknowledged`]).
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }

    /// Recoveries no person has acknowledged yet (`hapull audit ack`).
    pub fn unacknowledged(&self) -> impl Iterator<Item = &Recovery> {
        self.recoveries
            .iter()
            .filter(|r| r.acknowledged_by.is_none())
    }

    /// Intact, and every recovery acknowledged: the state in which `audit verify` exits 0.
    pub fn is_clean(&self) -> bool {
        self.is_intact() && self.unacknowledged().next().is_none()
    }
}

/// One recovery the writer recorded when it opened the log, as read back from its `audit.recovered`
/// record.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The `audit.recovered` record.
    pub seq: u64,
    /// When it was found (the record's time).
    pub found: jiff::Timestamp,
    pub file: PathBuf,
    pub line: u64,
    pub what: RecoveryWhat,
    /// The seq of the `audit.acknowledged` record that covers it.
    pub acknowledged_by: Option<u64>,
}

/// What a recovery was about. Offsets are bytes into the file named in [`Recovery::file`] (the file
/// current when the recovery was made).
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryWhat {
    /// Bytes at the end that were not a complete record (a write cut short, or a line cut off).
    Torn { offset: u64, length: u64 },
    /// Records the seal vouched for were missing from the end; their seqs are skipped, not reused.
    Lost {
        first_seq: u64,
        last_seq: u64,
        offset: Option<u64>,
    },
    /// The last record no longer matched the seal: it was changed after it was written.
    Changed { seq: u64, offset: Option<u64> },
    /// Anything else the writer recorded (e.g. an unreadable seal).
    Other { reason: String },
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovery recorded at seq {} ({} line {}, found {}): ",
            self.seq,
            self.file.display(),
            self.line,
            self.found.strftime("%Y-%m-%dT%H:%M:%SZ")
        )?;
        match &self.what {
            RecoveryWhat::Torn { offset, length } => write!(
                f,
                "{length} bytes at byte offset {offset} were not a complete record (kept in place)"
            )?,
            RecoveryWhat::Lost {
                first_seq,
                last_seq,
                offset,
            } => {
                if first_seq == last_seq {
                    write!(f, "record seq {first_seq} was lost from the end")?;
                } else {
                    write!(
                        f,
                        "records seq {first_seq}..={last_seq} were lost from the end"
                    )?;
                }
                if let Some(o) = offset {
                    write!(f, " at byte offset {o}")?;
                }
                write!(f, " (the seal named seq {last_seq})")?;
            }
            RecoveryWhat::Changed { seq, offset } => {
                write!(f, "record seq {seq}")?;
                if let Some(o) = offset {
                    write!(f, " at byte offset {o}")?;
                }
                write!(
                    f,
                    " did not match the seal: it was changed after it was written"
                )?;
            }
            RecoveryWhat::Other { reason } => write!(f, "{reason}")?,
        }
        match self.acknowledged_by {
            Some(ack) => write!(f, "; acknowledged at seq {ack}"),
            None => write!(f, "; NOT acknowledged"),
        }
    }
}

/// The recoveries one `audit.recovered` record describes (a torn tail and records lost before it can
/// come in one record).
fn recoveries_of(rec: &Record, file: &Path, line: u64) -> Vec<Recovery> {
    let mk = |what| Recovery {
        seq: rec.seq,
        found: rec.time,
        file: file.to_path_buf(),
        line,
        what,
        acknowledged_by: None,
    };
    let num = |k: &str| rec.data.get(k).and_then(serde_json::Value::as_u64);
    let mut out = Vec::new();
    if let Some((offset, length, _)) = rec.torn_reference() {
        out.push(mk(RecoveryWhat::Torn { offset, length }));
    }
    if let Some((first_seq, last_seq)) = rec.lost_range() {
        out.push(mk(RecoveryWhat::Lost {
            first_seq,
            last_seq,
            offset: num("lost_at_offset"),
        }));
    } else if let Some(seq) = num("changed_seq") {
        out.push(mk(RecoveryWhat::Changed {
            seq,
            offset: num("changed_offset"),
        }));
    }
    if out.is_empty() {
        let reason = rec
            .data
            .get("reason")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unspecified");
        let sealed = num("sealed_seq").map_or(String::new(), |s| format!(" (seal seq {s})"));
        out.push(mk(RecoveryWhat::Other {
            reason: format!("{reason}{sealed}"),
        }));
    }
    out
}

/// A place in the log and what is wrong (or noteworthy) there. Line numbers start at 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub file: PathBuf,
    pub line: u64,
    pub seq: Option<u64>,
    pub issue: Issue,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.issue)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Issue {
    /// `prev` is not the hash of the previous record: the previous line was changed, or lines were removed,
    /// inserted or reordered.
    PrevMismatch {
        expected: String,
        found: String,
    },
    SeqGap {
        expected: u64,
        found: u64,
    },
    InvalidJson(String),
    NotARecord(String),
    /// The line has no newline and no `audit.recovered` record follows it.
    IncompleteLine,
    /// The first record is not `seq` 1 with the all-zero `prev`.
    NotGenesis {
        seq: u64,
        prev: String,
    },
    /// The record the seal names hashes differently: it was changed after it was written.
    SealMismatch {
        expected: String,
        found: String,
    },
    /// The seal names a record past the end of the log: records were removed from the end.
    SealBeyondEnd {
        sealed_seq: u64,
    },
    /// An `audit.recovered` record names torn bytes that are not right before it.
    MissingFragment {
        offset: u64,
        length: u64,
    },
    // Warnings:
    /// Torn bytes left by a crash, followed by the matching `audit.recovered` record.
    TornFragment {
        offset: u64,
        length: u64,
    },
    /// The chain starts mid-way (accepted because `allow_partial` was set).
    PartialChain {
        seq: u64,
    },
    /// No seal file, so the newest record is protected by nothing.
    NoSeal {
        path: PathBuf,
    },
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Issue::PrevMismatch { expected, found } => write!(
                f,
                "prev hash mismatch (expected {expected}, found {found}): the line before was changed, or lines were removed, inserted or reordered"
            ),
            Issue::SeqGap { expected, found } => {
                write!(f, "seq gap (expected {expected}, found {found})")
            }
            Issue::InvalidJson(e) => write!(f, "invalid JSON ({e})"),
            Issue::NotARecord(e) => write!(f, "not an audit record ({e})"),
            Issue::IncompleteLine => write!(
                f,
                "incomplete line (no newline) with no audit.recovered record after it: a torn write that was never recovered (open the log with hapull to record it) or a write in progress"
            ),
            Issue::NotGenesis { seq, prev } => write!(
                f,
                "the chain does not start at the genesis record (seq {seq}, prev {prev}); earlier files are missing — pass them too, or use --allow-partial if they were removed on purpose"
            ),
            Issue::SealMismatch { expected, found } => write!(
                f,
                "record does not match the seal (seal sha256 {expected}, line sha256 {found}): it was changed after it was written"
            ),
            Issue::SealBeyondEnd { sealed_seq } => write!(
                f,
                "the log ends here but the seal names seq {sealed_seq}: records were removed from the end"
            ),
            Issue::MissingFragment { offset, length } => write!(
                f,
                "audit.recovered names {length} torn bytes at offset {offset} that are not right before it"
            ),
            Issue::TornFragment { offset, length } => write!(
                f,
                "torn write of {length} bytes at offset {offset}, kept and recorded by the audit.recovered record after it"
            ),
            Issue::PartialChain { seq } => {
                write!(
                    f,
                    "the chain starts at seq {seq}, not at the genesis record"
                )
            }
            Issue::NoSeal { path } => write!(
                f,
                "no seal file {}; the newest record and the end of the log are unprotected",
                path.display()
            ),
        }
    }
}

/// Checks the log at `current`: its rotated siblings, then the file itself, and its seal.
pub fn verify_path(current: &Path, allow_partial: bool) -> Result<VerifyReport, AuditError> {
    let files = files::discover(current)?;
    if files.is_empty() {
        return Err(AuditError::NotFound {
            path: current.to_path_buf(),
        });
    }
    verify(
        &files,
        &VerifyOptions {
            allow_partial,
            seal: Some(files::seal_path(current)),
        },
    )
}

struct Line {
    raw: RawLine,
    rec: Result<Record, ParseError>,
}

impl Line {
    fn read(reader: &mut files::LineReader) -> Result<Option<Line>, AuditError> {
        Ok(reader.next_line()?.map(|raw| {
            let rec = parse_line(&raw.bytes);
            Line { raw, rec }
        }))
    }

    fn issue_if_not_record(&self) -> Option<Issue> {
        if !self.raw.newline {
            return Some(Issue::IncompleteLine);
        }
        match &self.rec {
            Ok(_) => None,
            Err(ParseError::Json(e)) => Some(Issue::InvalidJson(e.clone())),
            Err(ParseError::Shape(e)) => Some(Issue::NotARecord(e.clone())),
        }
    }
}

/// Checks the chain through `files` in the order given (oldest first).
pub fn verify(files: &[PathBuf], opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    if files.is_empty() {
        return Err(AuditError::NoFiles);
    }
    let mut report = VerifyReport {
        files: files.to_vec(),
        ..Default::default()
    };
    let seal: Option<Seal> = match &opts.seal {
        Some(p) => {
            let s = files::read_seal(p)?;
            if s.is_none() {
                report.warnings.push(Finding {
                    file: p.clone(),
                    line: 0,
                    seq: None,
                    issue: Issue::NoSeal { path: p.clone() },
                });
            }
            s
        }
        None => None,
    };
    report.sealed_seq = seal.as_ref().map(|s| s.seq);
    let mut chain = Chain {
        expected: None,
        seal: seal.clone(),
        seal_seen: false,
        allow_partial: opts.allow_partial,
    };
    let mut end: Option<(PathBuf, u64)> = None;

    for file in files {
        let mut reader = files::open_lines(file)?;
        let mut held: Vec<(Line, Issue)> = Vec::new();
        let mut matched_recovery: Option<u64> = None;
        let mut cur = Line::read(&mut reader)?;
        let mut last_line_no = 0;
        while let Some(x) = cur.take() {
            last_line_no = x.raw.line_no;
            let next = Line::read(&mut reader)?;

            // Is X (with any lines held before it) the torn fragment the next line recovers?
            if let Some(n) = &next
                && let Ok(nrec) = &n.rec
                && let Some((o, l, h)) = nrec.torn_reference()
                && o.checked_add(l).and_then(|e| e.checked_add(1)) == Some(n.raw.offset)
            {
                let start = held
                    .iter()
                    .position(|(line, _)| line.raw.offset == o)
                    .or_else(|| (x.raw.offset == o).then_some(held.len()));
                if let Some(start) = start {
                    let mut bytes = Vec::new();
                    for line in held[start..].iter().map(|(l, _)| l).chain([&x]) {
                        if !bytes.is_empty() || line.raw.offset != o {
                            bytes.push(b'\n');
                        }
                        bytes.extend_from_slice(&line.raw.bytes);
                    }
                    if bytes.len() as u64 == l && hex::encode(sha256(&bytes)) == h {
                        if start > 0 {
                            let (line, issue) = held.swap_remove(0);
                            report.problem = Some(finding(file, &line, issue));
                            return Ok(report);
                        }
                        let first_line = held.first().map_or(x.raw.line_no, |(l, _)| l.raw.line_no);
                        report.warnings.push(Finding {
                            file: file.clone(),
                            line: first_line,
                            seq: None,
                            issue: Issue::TornFragment {
                                offset: o,
                                length: l,
                            },
                        });
                        held.clear();
                        matched_recovery = Some(n.raw.offset);
                        cur = next;
                        continue;
                    }
                }
            }

            if let Some((line, issue)) = held.drain(..).next() {
                report.problem = Some(finding(file, &line, issue));
                return Ok(report);
            }
            if let Some(issue) = x.issue_if_not_record() {
                held.push((x, issue));
                cur = next;
                continue;
            }
            if let Ok(rec) = &x.rec {
                if let Some((o, l, _)) = rec.torn_reference()
                    && matched_recovery != Some(x.raw.offset)
                {
                    report.problem = Some(Finding {
                        file: file.clone(),
                        line: x.raw.line_no,
                        seq: Some(rec.seq),
                        issue: Issue::MissingFragment {
                            offset: o,
                            length: l,
                        },
                    });
                    return Ok(report);
                }
                let at = (file.as_path(), x.raw.line_no);
                if let Err(issue) = chain.accept(rec, &x.raw.bytes, at, &mut report) {
                    report.problem = Some(Finding {
                        file: file.clone(),
                        line: x.raw.line_no,
                        seq: Some(rec.seq),
                        issue,
                    });
                    return Ok(report);
                }
                note_recovery_or_ack(rec, file, x.raw.line_no, &mut report);
            }
            cur = next;
        }
        if let Some((line, issue)) = held.drain(..).next() {
            report.problem = Some(finding(file, &line, issue));
            return Ok(report);
        }
        end = Some((file.clone(), last_line_no));
    }

    if let Some(seal) = &chain.seal
        && !chain.seal_seen
        && report.last_seq.is_none_or(|last| seal.seq > last)
    {
        let (file, line) = end.unwrap_or_default();
        report.problem = Some(Finding {
            file,
            line,
            seq: report.last_seq,
            issue: Issue::SealBeyondEnd {
                sealed_seq: seal.seq,
            },
        });
    }
    Ok(report)
}

/// Collects `audit.recovered` records and applies `audit.acknowledged` ones (each covers every recovery
/// up to its `through_seq`).
fn note_recovery_or_ack(rec: &Record, file: &Path, line: u64, report: &mut VerifyReport) {
    if rec.kind == Kind::Recovered.as_str() {
        report.recoveries.extend(recoveries_of(rec, file, line));
    } else if rec.kind == Kind::Acknowledged.as_str()
        && let Some(through) = rec
            .data
            .get("through_seq")
            .and_then(serde_json::Value::as_u64)
    {
        for r in &mut report.recoveries {
            if r.seq <= through && r.acknowledged_by.is_none() {
                r.acknowledged_by = Some(rec.seq);
            }
        }
    }
}

fn finding(file: &Path, line: &Line, issue: Issue) -> Finding {
    Finding {
        file: file.to_path_buf(),
        line: line.raw.line_no,
        seq: line.rec.as_ref().ok().map(|r| r.seq),
        issue,
    }
}

struct Chain {
    /// (next seq, hash of the previous line)
    expected: Option<(u64, String)>,
    seal: Option<Seal>,
    seal_seen: bool,
    allow_partial: bool,
}

impl Chain {
    fn accept(
        &mut self,
        rec: &Record,
        line: &[u8],
        (file, line_no): (&Path, u64),
        report: &mut VerifyReport,
    ) -> Result<(), Issue> {
        match &self.expected {
            None => {
                if rec.seq != FIRST_SEQ || rec.prev != GENESIS_PREV {
                    if !self.allow_partial {
                        return Err(Issue::NotGenesis {
                            seq: rec.seq,
                            prev: rec.prev.clone(),
                        });
                    }
                    report.warnings.push(Finding {
                        file: file.to_path_buf(),
                        line: line_no,
                        seq: Some(rec.seq),
                        issue: Issue::PartialChain { seq: rec.seq },
                    });
                }
            }
            Some((seq, prev)) => {
                // A recovery record skips the seqs of records lost from the end, and says so.
                let declared_gap = rec
                    .lost_range()
                    .is_some_and(|(first, last)| first == *seq && rec.seq == last + 1);
                if rec.seq != *seq && !declared_gap {
                    return Err(Issue::SeqGap {
                        expected: *seq,
                        found: rec.seq,
                    });
                }
                if rec.prev != *prev {
                    return Err(Issue::PrevMismatch {
                        expected: prev.clone(),
                        found: rec.prev.clone(),
                    });
                }
            }
        }
        let hash = hex::encode(sha256(line));
        if let Some(seal) = &self.seal
            && seal.seq == rec.seq
        {
            if seal.sha256 != hash {
                return Err(Issue::SealMismatch {
                    expected: seal.sha256.clone(),
                    found: hash,
                });
            }
            self.seal_seen = true;
        }
        report.records += 1;
        report.first_seq.get_or_insert(rec.seq);
        report.last_seq = Some(rec.seq);
        report.last_sha256 = Some(hash.clone());
        self.expected = Some((rec.seq + 1, hash));
        Ok(())
    }
}

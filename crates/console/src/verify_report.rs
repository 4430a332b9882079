//! The verifier's last result: `stack/stack.sh pipeline` keeps the report `cdcconsumer verify`
//! printed (its `Display` form: one line per table, then the verdict) in
//! `<state>/last-verify.txt`, after a first line `finished_at=<RFC 3339> exit=<status>`.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLine {
    pub table: String,
    pub checked: u64,
    pub matching: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastVerify {
    pub finished_at: Option<String>,
    /// The verifier's exit status: 0 clean, 1 drift, 2 could not verify.
    pub exit: Option<i32>,
    pub clean: bool,
    pub verdict: String,
    pub tables: Vec<TableLine>,
}

/// `users: checked 100, matching 100, missing 0, extra 0, different 0 (…)`.
fn table_line(line: &str) -> Option<TableLine> {
    let (table, rest) = line.split_once(": checked ")?;
    if table.contains(' ') {
        return None;
    }
    let rest = rest.split(" (").next()?;
    let mut numbers = rest.split(", ");
    let checked = numbers.next()?.trim().parse().ok()?;
    let mut field =
        |name: &str| -> Option<u64> { numbers.next()?.strip_prefix(name)?.trim().parse().ok() };
    Some(TableLine {
        table: table.to_owned(),
        checked,
        matching: field("matching ")?,
        missing: field("missing ")?,
        extra: field("extra ")?,
        different: field("different ")?,
    })
}

pub fn parse(text: &str) -> LastVerify {
    let mut finished_at = None;
    let mut exit = None;
    let mut verdict = String::new();
    let mut tables = Vec::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("finished_at=") {
            let mut parts = header.split_whitespace();
            finished_at = parts.next().map(str::to_owned);
            exit = parts
                .find_map(|p| p.strip_prefix("exit="))
                .and_then(|e| e.parse().ok());
        } else if let Some(table) = table_line(line) {
            tables.push(table);
        } else if line.starts_with("verify: ") || line.starts_with("error: ") {
            verdict = line.to_owned();
        }
    }
    let drift = tables.iter().any(|t| t.missing + t.extra + t.different > 0);
    let clean = exit == Some(0) && !drift && !tables.is_empty();
    if verdict.is_empty() {
        verdict = match exit {
            Some(0) => "verify: clean".to_owned(),
            Some(1) => "verify: drift".to_owned(),
            Some(_) => "verify: could not verify".to_owned(),
            None => "verify: no verdict".to_owned(),
        };
    }
    LastVerify {
        finished_at,
        exit,
        clean,
        verdict,
        tables,
    }
}

/// The last result, if the pipeline has run with this state folder.
pub fn read(path: &Path) -> Option<LastVerify> {
    std::fs::read_to_string(path).ok().map(|text| parse(&text))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cdcconsumer::verify::compare::{Report, TableReport};

    use super::*;

    fn table(name: &'static str, missing: u64) -> TableReport {
        TableReport {
            table: name,
            checked: 100,
            matching: 100 - missing,
            missing,
            extra: 0,
            different: 0,
            different_columns: BTreeMap::new(),
            schema_problems: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// Parsed from the verifier's own `Display`, so a change of its format shows here.
    #[test]
    fn reads_the_verifiers_report() {
        let clean = Report {
            tables: vec![table("users", 0), table("orders", 0)],
        };
        let text = format!("finished_at=2026-12-03T08:41:07Z exit=0\n{clean}\n");
        let parsed = parse(&text);
        assert!(parsed.clean);
        assert_eq!(parsed.tables.len(), 2);
        assert_eq!(parsed.tables[1].table, "orders");
        assert_eq!(parsed.tables[1].checked, 100);
        assert_eq!(parsed.verdict, "verify: Cassandra agrees with PostgreSQL");
        assert_eq!(parsed.finished_at.as_deref(), Some("2026-12-03T08:41:07Z"));

        let drift = Report {
            tables: vec![table("users", 2)],
        };
        let parsed = parse(&format!(
            "finished_at=2026-12-03T08:41:07Z exit=1\n{drift}\n"
        ));
        assert!(!parsed.clean);
        assert_eq!(parsed.tables[0].missing, 2);
        assert_eq!(parsed.verdict, "verify: DRIFT in 2 rows");

        let failed = parse("finished_at=2026-12-03T08:41:07Z exit=2\n");
        assert!(!failed.clean);
        assert_eq!(failed.verdict, "verify: could not verify");
    }
}

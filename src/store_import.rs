//! `bizcall store import <file.csv>`: the old service's stores, one per
//! line as `slug,name,number[,number…]`. Every bad row is reported with its
//! line number and nothing is imported then; a store already present with
//! the same name and numbers is left alone, so the import can be re-run.

use crate::cdr::normalize_number;
use crate::db::{Db, Store};

/// Largest file read: far beyond any chain's store list.
pub const MAX_FILE: usize = 8 * 1024 * 1024;

/// Splits one CSV line: commas, fields optionally in double quotes with
/// `""` for a quote inside.
fn fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field"),
            (false, ',') => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                was_quoted = false;
            }
            (false, c) if was_quoted && !c.is_whitespace() => {
                return Err("text after a closing quote")
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("an unterminated quote");
    }
    out.push(cur.trim().to_string());
    Ok(out)
}

/// Reads the file's rows; every problem as `line N: …`.
pub fn parse(text: &str) -> Result<Vec<(usize, Store)>, Vec<String>> {
    let mut rows: Vec<(usize, Store)> = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = match fields(line) {
            Ok(f) => f,
            Err(e) => {
                errors.push(format!("line {n}: {e}"));
                continue;
            }
        };
        // An optional header.
        if rows.is_empty() && errors.is_empty() && f[0].eq_ignore_ascii_case("slug") {
            continue;
        }
        if f.len() < 3 {
            errors.push(format!(
                "line {n}: expected slug,name,number[,number…], got {} field(s)",
                f.len()
            ));
            continue;
        }
        let slug = &f[0];
        if !crate::slug::is_valid(slug) {
            errors.push(format!(
                "line {n}: slug {slug:?}: expected {}",
                crate::slug::RULE
            ));
            continue;
        }
        let name = &f[1];
        if let Some(why) = crate::text::refused_char(name, false) {
            errors.push(format!("line {n}: name: {why}"));
        } else if name.is_empty() || name.chars().count() > 200 {
            errors.push(format!("line {n}: name: expected 1 to 200 characters"));
            continue;
        }
        let mut numbers: Vec<String> = Vec::new();
        let mut bad = None;
        for raw in f[2..].iter().filter(|s| !s.is_empty()) {
            match normalize_number(raw) {
                Some(d) if !numbers.contains(&d) => numbers.push(d),
                Some(_) => {}
                None => {
                    bad = Some(format!(
                        "line {n}: number {raw:?}: expected 1 to 20 digits ('-' allowed)"
                    ));
                    break;
                }
            }
        }
        if let Some(e) = bad {
            errors.push(e);
            continue;
        }
        if numbers.is_empty() {
            errors.push(format!("line {n}: store {slug} has no number"));
            continue;
        }
        if let Some((first, _)) = rows.iter().find(|(_, s)| s.slug == *slug) {
            errors.push(format!("line {n}: store {slug} repeats line {first}"));
            continue;
        }
        if let Some((first, other, num)) = rows.iter().find_map(|(l, s)| {
            numbers
                .iter()
                .find(|d| s.numbers.contains(d))
                .map(|d| (*l, s.slug.clone(), d.clone()))
        }) {
            errors.push(format!(
                "line {n}: number {num} is also store {other}'s (line {first})"
            ));
            continue;
        }
        rows.push((
            n,
            Store {
                slug: slug.clone(),
                name: name.clone(),
                numbers,
            },
        ));
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub added: usize,
    pub unchanged: usize,
}

/// Checks the rows against the stores already there and adds the new ones
/// in one transaction. A store present with other details, or a number
/// another store owns, is an error for its line, and nothing is added.
pub async fn import(
    db: &Db,
    rows: &[(usize, Store)],
) -> anyhow::Result<Result<Imported, Vec<String>>> {
    let existing = db.store_list().await?;
    let mut errors = Vec::new();
    let mut new = Vec::new();
    let mut unchanged = 0;
    for (n, row) in rows {
        if let Some(have) = existing.iter().find(|s| s.slug == row.slug) {
            let mut a = have.numbers.clone();
            let mut b = row.numbers.clone();
            a.sort();
            b.sort();
            if have.name == row.name && a == b {
                unchanged += 1;
            } else {
                errors.push(format!(
                    "line {n}: store {} exists with other details (name {:?}, numbers {}); change it with store remove/add",
                    row.slug,
                    have.name,
                    have.numbers.join(",")
                ));
            }
            continue;
        }
        if let Some((other, num)) = existing.iter().find_map(|s| {
            row.numbers
                .iter()
                .find(|d| s.numbers.contains(d))
                .map(|d| (s.slug.clone(), d.clone()))
        }) {
            errors.push(format!("line {n}: number {num} belongs to store {other}"));
            continue;
        }
        new.push(row.clone());
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    db.stores_add_all(&new).await?;
    Ok(Ok(Imported {
        added: new.len(),
        unchanged,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields() {
        assert_eq!(fields("a, b ,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            fields("a,\"b, \"\"c\"\"\",d").unwrap(),
            ["a", "b, \"c\"", "d"]
        );
        assert!(fields("a,\"b").is_err());
        assert!(fields("a,b\"c").is_err());
        assert!(fields("a,\"b\"c").is_err());
    }

    #[test]
    fn rows_and_line_numbered_errors() {
        let text = "slug,name,number\n\
                    # comment\n\
                    \n\
                    gangnam,\"Gangnam, 1st\",050-1111-2222,02-555-6666\n\
                    jamsil,Jamsil,0503333\n";
        let rows = parse(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 4);
        assert_eq!(rows[0].1.name, "Gangnam, 1st");
        assert_eq!(rows[0].1.numbers, ["05011112222", "025556666"]);

        let text = "Bad_Slug,x,0501\n\
                    ok,,0502\n\
                    ok2,Name\n\
                    ok3,Name,12ab\n\
                    ok4,Name,0504\n\
                    ok4,Again,0505\n\
                    ok5,Other,0504\n\
                    ok6,\"open,0506\n";
        let errors = parse(text).unwrap_err();
        let lines: Vec<&str> = errors
            .iter()
            .map(|e| e.split(':').next().unwrap())
            .collect();
        assert_eq!(
            lines,
            ["line 1", "line 2", "line 3", "line 4", "line 6", "line 7", "line 8"],
            "{errors:?}"
        );
        assert!(errors[4].contains("repeats line 5"), "{errors:?}");
        assert!(errors[5].contains("also store ok4's"), "{errors:?}");
    }
}

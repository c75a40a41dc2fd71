//! containerd's filter syntax, used by Events.Subscribe, Journal.Subscribe, Containers.List and Leases.List.
//!
//! A filter string is selectors joined by `,` (AND); several strings are OR'ed; an empty string (or no strings)
//! matches everything. A selector is `fieldpath`, `fieldpath==value`, `fieldpath!=value` or `fieldpath~=regexp`.
//! Field path components are separated by `.` and may be quoted (`labels."a.b"`); values may be bare (up to the
//! next `,`) or quoted with `"`, `'` or (for regexps) `/`. Regexps use the `regex` crate: containerd matches with
//! Go's RE2 syntax, which `regex` implements (linear time, no backreferences), so a client's filter means the same.
//! A missing field never matches. This module must never evaluate anything but these selectors.

use regex::Regex;

/// A filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason}")]
pub struct FilterError {
    /// The filter string.
    pub filter: String,
    /// Why.
    pub reason: String,
}

/// Something a filter can look fields up in.
pub trait Fields {
    /// The value at `path` (`["labels", "a"]`), or None when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Re(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, f: &dyn Fields) -> bool {
        let Some(v) = f.field(&self.path) else {
            return false;
        };
        match &self.op {
            Op::Present => true,
            Op::Eq(x) => v == *x,
            Op::Ne(x) => v != *x,
            Op::Re(r) => r.is_match(&v),
        }
    }
}

/// A parsed filter: OR of ANDs. The default matches everything.
#[derive(Debug, Clone)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
    match_all: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            any_of: Vec::new(),
            match_all: true,
        }
    }
}

impl Filter {
    /// Parse filter strings.
    pub fn parse(filters: &[String]) -> Result<Filter, FilterError> {
        let mut any_of = Vec::new();
        let mut match_all = filters.is_empty();
        for f in filters {
            if f.trim().is_empty() {
                match_all = true;
                continue;
            }
            any_of.push(parse_one(f).map_err(|reason| FilterError {
                filter: f.clone(),
                reason,
            })?);
        }
        Ok(Filter { any_of, match_all })
    }

    /// Whether `f` passes the filter.
    pub fn matches(&self, f: &dyn Fields) -> bool {
        self.match_all
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|s| s.matches(f)))
    }

    /// Whether this filter accepts everything.
    pub fn is_match_all(&self) -> bool {
        self.match_all
    }
}

fn parse_one(s: &str) -> Result<Vec<Selector>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        skip_ws(&chars, &mut i);
        // field path
        let mut path = Vec::new();
        loop {
            skip_ws(&chars, &mut i);
            let comp = if i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                quoted(&chars, &mut i)?
            } else {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '-' | '/'))
                {
                    i += 1;
                }
                if start == i {
                    return Err(format!("expected a field name at offset {start}"));
                }
                chars[start..i].iter().collect()
            };
            path.push(comp);
            if i < chars.len() && chars[i] == '.' {
                i += 1;
                continue;
            }
            break;
        }
        skip_ws(&chars, &mut i);
        let op = if i >= chars.len() || chars[i] == ',' {
            Op::Present
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            i += 2;
            skip_ws(&chars, &mut i);
            match two.as_str() {
                "==" => Op::Eq(value(&chars, &mut i, false)?),
                "!=" => Op::Ne(value(&chars, &mut i, false)?),
                "~=" => {
                    let v = value(&chars, &mut i, true)?;
                    Op::Re(Regex::new(&v).map_err(|e| format!("bad regexp {v:?}: {e}"))?)
                }
                other => return Err(format!("unknown operator {other:?}")),
            }
        };
        out.push(Selector { path, op });
        skip_ws(&chars, &mut i);
        if i >= chars.len() {
            break;
        }
        if chars[i] != ',' {
            return Err(format!("expected ',' at offset {i}"));
        }
        i += 1;
    }
    Ok(out)
}

fn skip_ws(chars: &[char], i: &mut usize) {
    while *i < chars.len() && chars[*i].is_whitespace() {
        *i += 1;
    }
}

fn quoted(chars: &[char], i: &mut usize) -> Result<String, String> {
    let q = chars[*i];
    *i += 1;
    let mut out = String::new();
    while *i < chars.len() {
        let c = chars[*i];
        *i += 1;
        if c == q {
            return Ok(out);
        }
        if c == '\\' && *i < chars.len() {
            let n = chars[*i];
            *i += 1;
            match n {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                // Keep regexp escapes (\d, \.) intact; only unescape the quote and the backslash.
                x if x == q || x == '\\' => out.push(x),
                x => {
                    out.push('\\');
                    out.push(x);
                }
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated quoted string".into())
}

fn value(chars: &[char], i: &mut usize, regexp: bool) -> Result<String, String> {
    if *i < chars.len() && (chars[*i] == '"' || chars[*i] == '\'' || (regexp && chars[*i] == '/')) {
        return quoted(chars, i);
    }
    let start = *i;
    while *i < chars.len() && chars[*i] != ',' {
        *i += 1;
    }
    let v: String = chars[start..*i].iter().collect();
    let v = v.trim().to_string();
    if v.is_empty() {
        return Err(format!("expected a value at offset {start}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct M(HashMap<&'static str, &'static str>);
    impl Fields for M {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|s| s.to_string())
        }
    }

    fn f(v: &[&str]) -> Filter {
        Filter::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("parses")
    }

    #[test]
    fn syntax_and_semantics() {
        let ev = M([
            ("topic", "/tasks/exit"),
            ("namespace", "ns1"),
            ("labels.a.b", "x"),
        ]
        .into());
        assert!(f(&[]).matches(&ev));
        assert!(f(&[""]).matches(&ev));
        assert!(f(&["topic==\"/tasks/exit\""]).matches(&ev));
        assert!(f(&["topic==/tasks/exit"]).matches(&ev));
        assert!(!f(&["topic==/tasks/start"]).matches(&ev));
        assert!(f(&["topic==/tasks/start", "namespace==ns1"]).matches(&ev));
        assert!(!f(&["topic==/tasks/exit,namespace==ns2"]).matches(&ev));
        assert!(f(&["topic~=^/tasks/,namespace!=ns2"]).matches(&ev));
        assert!(f(&["topic~=\"^/tasks/(exit|start)$\""]).matches(&ev));
        assert!(f(&["topic~=/^\\/tasks\\//"]).matches(&ev));
        assert!(f(&["labels.\"a.b\"==x"]).matches(&ev));
        assert!(f(&["namespace"]).matches(&ev));
        assert!(!f(&["image"]).matches(&ev));
        assert!(!f(&["image!=x"]).matches(&ev));
        for bad in ["topic=x", "==x", "topic~=(", "topic==\"x"] {
            assert!(Filter::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

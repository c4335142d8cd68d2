//! `${variable}` templates and the tiny conditions of `branch` steps.
//!
//! Templates are the only way values move through a dialplan: `"${customer_id}"`,
//! `"sip:${dialed}@pbx"`. They are parsed when the plan loads, so a typo like `${customer_id`
//! is a load-time problem with a line number, and `ivrd check` can list every variable a
//! plan reads. `$$` writes a literal `$`.
//!
//! Conditions are deliberately tiny (a dialplan is not a programming language): one
//! comparison, `A == B`, `A != B`, `A =~ 'regex'` or `A !~ 'regex'`, where each side is a
//! `${variable}` or a quoted value that may itself contain variables. "Is empty" is
//! `${x} == ''`. Regexes must be literal so they are compiled and checked at load time.

use super::problem::Pos;
use regex::Regex;
use std::cmp::Ordering;

/// Why a template could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` with no closing `}`.
    #[error("\"${{\" at character {0} is never closed with \"}}\"")]
    Unterminated(usize),
    /// `${}`.
    #[error("\"${{}}\" names no variable")]
    EmptyName,
    /// A name with characters a variable cannot have.
    #[error("\"{0}\" is not a variable name (letters, digits, '_', '-', parts joined by '.')")]
    BadName(String),
}

/// Why a branch condition could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// Something other than `${var}` or a quoted value where a value belongs.
    #[error("expected a ${{variable}} or a 'quoted' value at \"{0}\"")]
    ExpectedValue(String),
    /// A quote that is never closed.
    #[error("the quote starting at \"{0}\" is never closed")]
    UnclosedQuote(String),
    /// No operator, or an unknown one.
    #[error("expected ==, !=, =~ or !~ at \"{0}\"")]
    ExpectedOperator(String),
    /// Text after the right-hand value.
    #[error("unexpected \"{0}\" after the condition")]
    Trailing(String),
    /// A regex with variables in it (it could not be checked before the call).
    #[error("the pattern after {0} must be a quoted literal without ${{variables}}")]
    DynamicPattern(&'static str),
    /// A regex the regex crate rejects.
    #[error("bad pattern: {0}")]
    BadPattern(String),
    /// A side of the comparison is a bad template.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(String),
}

/// A string with `${variable}` references, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written in the file (for messages and graphs).
    pub raw: String,
    pub parts: Vec<Part>,
    /// Where it was written (for problems about the variables it reads).
    pub pos: Pos,
}

impl Template {
    pub fn parse(raw: &str, pos: Pos) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                text.push('$');
                rest = r;
            } else if let Some(r) = after.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    return Err(TemplateError::Unterminated(raw.len() - rest.len() + i + 1));
                };
                let name = r[..end].trim();
                if name.is_empty() {
                    return Err(TemplateError::EmptyName);
                }
                if !is_var_name(name) {
                    return Err(TemplateError::BadName(name.to_string()));
                }
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Var(name.to_string()));
                rest = &r[end + 1..];
            } else {
                // A lone `$` (a price, a regex anchor) is just text.
                text.push('$');
                rest = after;
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            raw: raw.to_string(),
            parts,
            pos,
        })
    }

    /// The variables the template reads, in order (with repeats).
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text, if the template has no variables.
    pub fn as_static(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(_) => return None,
            }
        }
        Some(out)
    }

    pub fn render(&self, mut lookup: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&lookup(v)),
            }
        }
        out
    }
}

/// Variable names: parts of letters, digits, `_` and `-`, joined by `.` (`customer.id`,
/// `ask_pin.outcome`), starting with a letter or `_`.
pub fn is_var_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// What a condition tests its left side against.
#[derive(Debug, Clone)]
pub enum Test {
    Eq(Template),
    Ne(Template),
    Matches(Regex),
    NotMatches(Regex),
    /// `<`, `<=`, `>`, `>=` between whole numbers (a counter and a limit): which orderings
    /// pass. Either side not a whole number: false.
    Compare(Template, &'static [std::cmp::Ordering]),
}

/// `left OP right`, parsed.
#[derive(Debug, Clone)]
pub struct Condition {
    /// As written (for graphs and messages).
    pub raw: String,
    pub left: Template,
    pub test: Test,
}

impl Condition {
    pub fn parse(raw: &str, pos: Pos) -> Result<Condition, ConditionError> {
        let (left, rest) = operand(raw, pos)?;
        let rest = rest.trim_start();
        // Two-character operators first, so `<=` is not read as `<` and `=`.
        let (op, rest) = ["==", "!=", "=~", "!~", "<=", ">=", "<", ">"]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|r| (*op, r)))
            .ok_or_else(|| ConditionError::ExpectedOperator(rest.to_string()))?;
        let (right, rest) = operand(rest, pos)?;
        if !rest.trim().is_empty() {
            return Err(ConditionError::Trailing(rest.trim().to_string()));
        }
        let pattern = |op: &'static str| -> Result<Regex, ConditionError> {
            let lit = right
                .as_static()
                .ok_or(ConditionError::DynamicPattern(op))?;
            Regex::new(&lit).map_err(|e| ConditionError::BadPattern(first_line(&e.to_string())))
        };
        let test = match op {
            "==" => Test::Eq(right),
            "!=" => Test::Ne(right),
            "=~" => Test::Matches(pattern("=~")?),
            "!~" => Test::NotMatches(pattern("!~")?),
            "<" => Test::Compare(right, &[Ordering::Less]),
            "<=" => Test::Compare(right, &[Ordering::Less, Ordering::Equal]),
            ">" => Test::Compare(right, &[Ordering::Greater]),
            _ => Test::Compare(right, &[Ordering::Greater, Ordering::Equal]),
        };
        Ok(Condition {
            raw: raw.to_string(),
            left,
            test,
        })
    }

    /// The variables the condition reads.
    pub fn vars(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.left.vars().collect();
        if let Test::Eq(r) | Test::Ne(r) | Test::Compare(r, _) = &self.test {
            v.extend(r.vars());
        }
        v
    }

    pub fn eval(&self, mut lookup: impl FnMut(&str) -> String) -> bool {
        let left = self.left.render(&mut lookup);
        match &self.test {
            Test::Eq(r) => left == r.render(&mut lookup),
            Test::Ne(r) => left != r.render(&mut lookup),
            Test::Matches(re) => re.is_match(&left),
            Test::NotMatches(re) => !re.is_match(&left),
            Test::Compare(r, pass) => {
                let right = r.render(&mut lookup);
                match (left.trim().parse::<i64>(), right.trim().parse::<i64>()) {
                    (Ok(a), Ok(b)) => pass.contains(&a.cmp(&b)),
                    _ => false,
                }
            }
        }
    }
}

/// The regex crate's messages are multi-line drawings; a problem line wants the gist.
pub(crate) fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .or_else(|| s.lines().next())
        .unwrap_or(s)
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// Reads one side of a condition: `${var}` or a quoted template; returns it and the rest.
fn operand(s: &str, pos: Pos) -> Result<(Template, &str), ConditionError> {
    let s = s.trim_start();
    if s.starts_with("${") {
        let end = s
            .find('}')
            .ok_or_else(|| ConditionError::ExpectedValue(s.to_string()))?;
        return Ok((Template::parse(&s[..=end], pos)?, &s[end + 1..]));
    }
    let Some(quote) = s.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        return Err(ConditionError::ExpectedValue(s.to_string()));
    };
    let body = &s[1..];
    let end = body
        .find(quote)
        .ok_or_else(|| ConditionError::UnclosedQuote(s.to_string()))?;
    Ok((Template::parse(&body[..end], pos)?, &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> String {
        match name {
            "a" => "yes".into(),
            "customer.language" => "de".into(),
            "n" => "0301234".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn templates_parse_and_render() {
        let t = Template::parse("sip:${a}@pbx $$5 ${customer.language}$", Pos::default()).unwrap();
        assert_eq!(t.vars().collect::<Vec<_>>(), ["a", "customer.language"]);
        assert_eq!(t.render(vars), "sip:yes@pbx $5 de$");
        assert_eq!(t.as_static(), None);
        assert_eq!(
            Template::parse("plain", Pos::default())
                .unwrap()
                .as_static()
                .as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn template_errors() {
        let p = Pos::default();
        assert_eq!(
            Template::parse("x ${a", p),
            Err(TemplateError::Unterminated(3))
        );
        assert_eq!(Template::parse("${}", p), Err(TemplateError::EmptyName));
        assert_eq!(
            Template::parse("${a b}", p),
            Err(TemplateError::BadName("a b".into()))
        );
        assert_eq!(
            Template::parse("${1x}", p),
            Err(TemplateError::BadName("1x".into()))
        );
        assert!(Template::parse("${ask-id.outcome}", p).is_ok());
    }

    #[test]
    fn conditions_evaluate() {
        let p = Pos::default();
        let c = |s: &str| Condition::parse(s, p).unwrap().eval(vars);
        assert!(c("${a} == 'yes'"));
        assert!(!c("${a} != \"yes\""));
        assert!(c("${customer.language} == '${customer.language}'"));
        assert!(c("${missing} == ''"));
        assert!(c("${n} =~ '^0[0-9]+$'"));
        assert!(c("${a} !~ '^[0-9]+$'"));
        assert!(!c("'x' == 'y'"));
        let cond = Condition::parse("${a} == '${b}'", p).unwrap();
        assert_eq!(cond.vars(), ["a", "b"]);
        // Whole numbers compare as numbers ('10' > '9'); anything else is false.
        let n = |s: &str| {
            Condition::parse(s, p).unwrap().eval(|v| match v {
                "tries" => "10".into(),
                "limit" => " 9 ".into(),
                "word" => "ten".into(),
                _ => String::new(),
            })
        };
        assert!(n("${tries} > ${limit}"));
        assert!(n("${tries} >= '10'") && n("${tries} <= '10'"));
        assert!(!n("${tries} < ${limit}"));
        assert!(n("${limit} < '10'"));
        assert!(!n("${word} > '1'") && !n("${word} <= '1'"));
        assert!(!n("${unset} < '1'"));
        let cmp = Condition::parse("${tries} >= ${limit}", p).unwrap();
        assert_eq!(cmp.vars(), ["tries", "limit"]);
    }

    #[test]
    fn condition_errors() {
        let p = Pos::default();
        let e = |s: &str| Condition::parse(s, p).unwrap_err();
        assert_eq!(
            e("${a} == yes"),
            ConditionError::ExpectedValue("yes".into())
        );
        assert_eq!(
            e("${a} = 'yes'"),
            ConditionError::ExpectedOperator("= 'yes'".into())
        );
        assert_eq!(
            e("${a} == 'yes"),
            ConditionError::UnclosedQuote("'yes".into())
        );
        assert_eq!(e("${a} == 'y' x"), ConditionError::Trailing("x".into()));
        assert_eq!(e("${a} =~ '${b}'"), ConditionError::DynamicPattern("=~"));
        assert!(matches!(e("${a} =~ '('"), ConditionError::BadPattern(_)));
    }
}

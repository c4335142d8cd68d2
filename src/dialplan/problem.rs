//! What is wrong with a dialplan, where, and what to do about it.
//!
//! Every check (TOML syntax, step shape, graph, prompts, variables) reports a [`Problem`]
//! that points at a line and column of the file, so `ivrd check` reads like a compiler:
//! `dialplans/verify.toml:12:1: step "ask_pin": on_failure goes to "fallbak", which does not
//! exist (did you mean "fallback"?)`. Admins edit these files by hand, often on a server over
//! SSH: a line number and a concrete fix save them a round trip.

use std::fmt;

/// A place in a dialplan file, 1-based (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One problem in a dialplan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as the admin named it (e.g. `dialplans/verify.toml`).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// What is wrong, naming the step and key.
    pub message: String,
    /// What to do about it, if there is something better to say than the message.
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Problem {
        self.hint = hint;
        self
    }

    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Turns byte offsets (what the TOML parser reports) into lines and columns.
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(src: &'a str) -> LineIndex<'a> {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { src, starts }
    }

    pub(crate) fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.src.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = self
            .src
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        Pos { line, column }
    }

    /// The position of `needle` inside the byte range `within`, or of the range's start.
    /// TOML values nested in arrays and inline tables carry no spans of their own; this
    /// finds, say, a branch case's expression so its problem points at its own line.
    pub(crate) fn find(&self, within: std::ops::Range<usize>, needle: &str) -> Pos {
        let end = within.end.min(self.src.len());
        let start = within.start.min(end);
        match self.src.get(start..end).and_then(|s| s.find(needle)) {
            Some(i) if !needle.is_empty() => self.pos(start + i),
            _ => self.pos(start),
        }
    }
}

/// `did you mean "x"?` for the candidate closest to `word`, if one is close enough to be a
/// likely typo (at most a third of the word's length in edits, and at least one).
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean \"{c}\"?"))
}

/// The candidate [`did_you_mean`] would suggest.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.to_string()))
        .map(|(_, c)| c)
}

/// Edit distance over characters where swapping two neighbours counts as one edit (optimal
/// string alignment): the commonest typo, `lnag` for `lang`, is one edit, not two (plain
/// Levenshtein made it two, over the limit for a four-letter word). Dialplan words are
/// short, so O(n*m) is nothing.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let src = "a = 1\nbä = \"x\"\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(idx.pos(6), Pos { line: 2, column: 1 });
        // "ä" is two bytes but one column.
        let eq = src.find('=').unwrap();
        let eq2 = src[eq + 1..].find('=').unwrap() + eq + 1;
        assert_eq!(idx.pos(eq2), Pos { line: 2, column: 4 });
        assert_eq!(idx.find(0..src.len(), "\"x\""), Pos { line: 2, column: 6 });
        assert_eq!(idx.find(0..5, "zzz"), Pos { line: 1, column: 1 });
    }

    #[test]
    fn a_swap_of_two_letters_is_one_edit() {
        assert_eq!(edit_distance("lnag", "lang"), 1);
        assert_eq!(edit_distance("lang", "lang"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("lnag", ["lang", "goodbye"]).as_deref(),
            Some("did you mean \"lang\"?")
        );
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("fallbak", ["fallback", "goodbye"]).as_deref(),
            Some("did you mean \"fallback\"?")
        );
        assert_eq!(did_you_mean("xyz", ["fallback", "goodbye"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn displays_like_a_compiler() {
        let p = Problem::new(
            "dialplans/v.toml",
            Pos {
                line: 12,
                column: 1,
            },
            "it is wrong",
        )
        .with_hint(Some("did you mean \"x\"?".into()));
        assert_eq!(
            p.to_string(),
            "dialplans/v.toml:12:1: it is wrong (did you mean \"x\"?)"
        );
    }
}

//! Speaking values: digit by digit (`say_digits`) and as numbers (`say_number`).
//!
//! Numbers are composed from a small set of recorded words rather than one recording per
//! number, so two languages need 34 files each instead of a million. The composition is
//! language-specific: English says "twenty one", German says "einundzwanzig" (unit first,
//! joined by "und", and "ein" rather than "eins" inside compounds). Languages without rules
//! here cannot use `say_number` (`ivrd check` says so); at run time such a number is read
//! digit by digit rather than not at all.
//!
//! Prompt names (both languages have every file; `prompts/generate.sh` makes them):
//! `num-0` .. `num-19`, `num-20`, `num-30` .. `num-90`, `num-hundred`, `num-thousand`,
//! `num-and` ("and" / "und") and `num-one` (the combining form of 1: German "ein", as in
//! "einhundert"; English "one").

/// The largest number `say_number` speaks (six digits: enough for amounts and counts).
pub const NUMBER_MAX: u32 = 999_999;

/// The languages whose number composition is known.
pub const NUMBER_LANGUAGES: &[&str] = &["en", "de"];

/// The prompt that speaks one key, as `say_digits` uses it.
pub fn digit_prompt(c: char) -> Option<String> {
    match c {
        '0'..='9' => Some(format!("digit-{c}")),
        '*' => Some("star".into()),
        '#' => Some("hash".into()),
        _ => None,
    }
}

/// Every prompt `say_digits` may play (for checking that they exist).
pub fn digit_prompt_names() -> Vec<String> {
    "0123456789*#".chars().filter_map(digit_prompt).collect()
}

/// Every prompt `say_number` may play in `language`, or `None` if it has no number rules.
pub fn number_prompt_names(language: &str) -> Option<Vec<String>> {
    if !NUMBER_LANGUAGES.contains(&language) {
        return None;
    }
    let mut names: Vec<String> = (0..20).map(|n| format!("num-{n}")).collect();
    names.extend((2..10).map(|t| format!("num-{}", t * 10)));
    names.extend(["num-hundred", "num-thousand"].map(String::from));
    if language == "de" {
        names.extend(["num-and", "num-one"].map(String::from));
    }
    Some(names)
}

/// The prompts that speak `n` in `language`, or `None` if `n` is too large or the language
/// has no number rules.
pub fn number_prompts(language: &str, n: u32) -> Option<Vec<String>> {
    if n > NUMBER_MAX {
        return None;
    }
    let mut out = Vec::new();
    match language {
        "en" => english(n, &mut out),
        "de" => german(n, &mut out),
        _ => return None,
    }
    Some(out.into_iter().map(String::from).collect())
}

const UNITS: [&str; 20] = [
    "num-0", "num-1", "num-2", "num-3", "num-4", "num-5", "num-6", "num-7", "num-8", "num-9",
    "num-10", "num-11", "num-12", "num-13", "num-14", "num-15", "num-16", "num-17", "num-18",
    "num-19",
];
const TENS: [&str; 10] = [
    "", "", "num-20", "num-30", "num-40", "num-50", "num-60", "num-70", "num-80", "num-90",
];

/// American English: "two thousand twenty four", "one hundred one" (no "and").
fn english(n: u32, out: &mut Vec<&'static str>) {
    if n == 0 {
        out.push(UNITS[0]);
        return;
    }
    let (thousands, rest) = (n / 1000, n % 1000);
    if thousands > 0 {
        english_below_1000(thousands, out);
        out.push("num-thousand");
    }
    if rest > 0 {
        english_below_1000(rest, out);
    }
}

fn english_below_1000(n: u32, out: &mut Vec<&'static str>) {
    let (hundreds, rest) = (n / 100, n % 100);
    if hundreds > 0 {
        out.push(UNITS[hundreds as usize]);
        out.push("num-hundred");
    }
    match rest {
        0 => {}
        1..=19 => out.push(UNITS[rest as usize]),
        _ => {
            out.push(TENS[(rest / 10) as usize]);
            if rest % 10 > 0 {
                out.push(UNITS[(rest % 10) as usize]);
            }
        }
    }
}

/// German: "zweitausendvierundzwanzig", "einhunderteins", "einundzwanzigtausend".
fn german(n: u32, out: &mut Vec<&'static str>) {
    if n == 0 {
        out.push(UNITS[0]);
        return;
    }
    let (thousands, rest) = (n / 1000, n % 1000);
    if thousands > 0 {
        // Before "tausend" a final 1 is "ein" (einundzwanzigtausend, zweihunderteintausend).
        german_below_1000(thousands, true, out);
        out.push("num-thousand");
    }
    if rest > 0 {
        german_below_1000(rest, false, out);
    }
}

/// `combining`: the number is followed by a word (tausend), so a final 1 is "ein".
fn german_below_1000(n: u32, combining: bool, out: &mut Vec<&'static str>) {
    let (hundreds, rest) = (n / 100, n % 100);
    if hundreds > 0 {
        out.push(if hundreds == 1 {
            "num-one"
        } else {
            UNITS[hundreds as usize]
        });
        out.push("num-hundred");
    }
    match rest {
        0 => {}
        1 if combining => out.push("num-one"),
        1..=19 => out.push(UNITS[rest as usize]),
        _ => {
            let (tens, unit) = (rest / 10, rest % 10);
            if unit > 0 {
                // Unit first, then "und", then the tens: vier-und-zwanzig.
                out.push(if unit == 1 {
                    "num-one"
                } else {
                    UNITS[unit as usize]
                });
                out.push("num-and");
            }
            out.push(TENS[tens as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(lang: &str, n: u32) -> String {
        number_prompts(lang, n)
            .unwrap()
            .iter()
            .map(|p| p.trim_start_matches("num-"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn english_numbers() {
        assert_eq!(say("en", 0), "0");
        assert_eq!(say("en", 7), "7");
        assert_eq!(say("en", 13), "13");
        assert_eq!(say("en", 21), "20 1");
        assert_eq!(say("en", 100), "1 hundred");
        assert_eq!(say("en", 101), "1 hundred 1");
        assert_eq!(say("en", 999), "9 hundred 90 9");
        assert_eq!(say("en", 1000), "1 thousand");
        assert_eq!(say("en", 2024), "2 thousand 20 4");
        assert_eq!(say("en", 999_999), "9 hundred 90 9 thousand 9 hundred 90 9");
    }

    #[test]
    fn german_numbers() {
        assert_eq!(say("de", 0), "0");
        assert_eq!(say("de", 1), "1");
        assert_eq!(say("de", 7), "7");
        assert_eq!(say("de", 13), "13");
        // einundzwanzig: "ein", not "eins"
        assert_eq!(say("de", 21), "one and 20");
        assert_eq!(say("de", 100), "one hundred");
        // hunderteins: a final 1 stays "eins"
        assert_eq!(say("de", 101), "one hundred 1");
        assert_eq!(say("de", 999), "9 hundred 9 and 90");
        assert_eq!(say("de", 1000), "one thousand");
        assert_eq!(say("de", 1001), "one thousand 1");
        assert_eq!(say("de", 2024), "2 thousand 4 and 20");
        assert_eq!(say("de", 21_000), "one and 20 thousand");
        assert_eq!(say("de", 201_000), "2 hundred one thousand");
        assert_eq!(
            say("de", 999_999),
            "9 hundred 9 and 90 thousand 9 hundred 9 and 90"
        );
    }

    #[test]
    fn limits_and_languages() {
        assert_eq!(number_prompts("en", NUMBER_MAX + 1), None);
        assert_eq!(number_prompts("fr", 1), None);
        assert_eq!(number_prompt_names("fr"), None);
        // Every prompt any number uses is in the list `ivrd check` verifies.
        for lang in NUMBER_LANGUAGES {
            let names = number_prompt_names(lang).unwrap();
            for n in (0..=2100).chain([21_000, 201_000, 999_999]) {
                for p in number_prompts(lang, n).unwrap() {
                    assert!(names.contains(&p), "{lang} {n}: {p} not listed");
                }
            }
        }
        assert_eq!(digit_prompt('5').as_deref(), Some("digit-5"));
        assert_eq!(digit_prompt('A'), None);
        assert_eq!(digit_prompt_names().len(), 12);
    }
}

//! Keeping personal data out of logs and status output: phone numbers are masked wherever they
//! are shown (call logs, SMS logs, `/status`), so that tickets, chats and journals never carry
//! a customer's number in full. PINs never get here at all: their type prints `****`.

/// Masks a phone number for display: keeps the country code's first digits (three characters
/// with a leading `+`, else two) and the last two digits; everything else becomes `*`, and a
/// number of five characters or fewer is masked entirely (OWASP MFA cheat sheet: show no more
/// than needed to recognise it).
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let n = chars.len();
    if n <= 5 {
        return "*".repeat(n);
    }
    let keep_start = if chars[0] == '+' { 3 } else { 2 };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < keep_start || i >= n - 2 {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_all_but_the_ends() {
        assert_eq!(mask_number("+4915112345678"), "+49*********78");
        assert_eq!(mask_number("+123456"), "+12**56");
        assert_eq!(mask_number("0301234"), "03***34");
        // Short numbers say nothing at all.
        assert_eq!(mask_number("+1234"), "*****");
        assert_eq!(mask_number("123"), "***");
        assert_eq!(mask_number(""), "");
        // Not ASCII: counted in characters, never split inside one.
        assert_eq!(mask_number("+49ü1234567"), "+49******67");
    }
}

//! Words and numbers for the page: escaping of everything the report holds, and the formats
//! of times, lengths, amounts and counts.

use std::fmt::{self, Display};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::bake::report::Status;

/// Text made safe to place in HTML text or in a double-quoted attribute. Control characters
/// other than tab and line breaks (a terminal's colour codes in command output) show as
/// U+FFFD instead of reaching the page raw.
pub(super) struct Esc<'a>(pub(super) &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..]
                .chars()
                .next()
                .expect("find returns a char boundary");
            f.write_str(match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => "\u{fffd}",
            })?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    let markup = matches!(c, '&' | '<' | '>' | '"' | '\'');
    markup || (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

pub(super) fn status_word(status: Status) -> &'static str {
    match status {
        Status::Pending => "pending",
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
    }
}

/// A moment, to the second, in UTC: 2026-12-04T19:30:12Z.
pub(super) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A length of time for people: 42.5 s, 12 min 03 s, 2 h 05 min.
pub(super) fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round();
    let hours = (whole / 3600.0).floor();
    let minutes = (whole % 3600.0 / 60.0).floor();
    let rest = whole % 60.0;
    if hours >= 1.0 {
        format!("{hours:.0} h {minutes:02.0} min")
    } else {
        format!("{minutes:.0} min {rest:02.0} s")
    }
}

/// Seconds as a plain number: one decimal, or an exponent past what anyone reads as digits.
pub(super) fn seconds(value: f64) -> String {
    if value.abs() < 1e12 {
        format!("{value:.1}")
    } else {
        format!("{value:.3e}")
    }
}

/// Dollars, with more digits for amounts under a cent so they do not read as nothing.
pub(super) fn dollars(amount: f64) -> String {
    // A sum of nothing is -0.0, which would print as $-0.00.
    let amount = if amount == 0.0 { 0.0 } else { amount };
    if amount != 0.0 && amount.abs() < 0.01 {
        format!("${amount:.4}")
    } else {
        format!("${amount:.2}")
    }
}

/// A count with its thousands separated: 1,048,576.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_terminal_codes() {
        let hostile = "<a href=\"x\" title='y'>&\u{1b}[31mred\u{1b}[0m</a>\tok\n";

        let shown = Esc(hostile).to_string();

        assert_eq!(
            shown,
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;\u{fffd}[31mred\u{fffd}[0m\
             &lt;/a&gt;\tok\n"
        );
        assert_eq!(Esc("naïve — ünïcode").to_string(), "naïve — ünïcode");
    }

    #[test]
    fn lengths_of_time_read_in_the_largest_fitting_units() {
        assert_eq!(duration(0.0), "0.0 s");
        assert_eq!(duration(42.46), "42.5 s");
        assert_eq!(duration(723.4), "12 min 03 s");
        assert_eq!(duration(7500.0), "2 h 05 min");
    }

    #[test]
    fn amounts_under_a_cent_keep_their_digits() {
        assert_eq!(dollars(0.0), "$0.00");
        assert_eq!(dollars(-0.0), "$0.00");
        assert_eq!(dollars(0.0042), "$0.0042");
        assert_eq!(dollars(12.5), "$12.50");
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_048_576), "1,048,576");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }
}

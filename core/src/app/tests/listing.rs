//! Listing accounts: glob matching and pagination.

use super::*;
use crate::app::glob::Glob;
use crate::app::limits::{LIST_PAGE_SIZE, PATTERN_BYTES_MAX, USERNAME_BYTES_MAX};

/// The matcher below the query, for cases usernames cannot express (long or Unicode text).
fn glob(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

#[test]
fn glob_matches_literals_question_marks_and_stars() {
    let cases = [
        ("", "", true),
        ("", "anything", true),
        ("abc", "abc", true),
        ("abc", "abd", false),
        ("abc", "ab", false),
        ("abc", "abcd", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("a?c", "abbc", false),
        ("???", "abc", true),
        ("???", "ab", false),
        ("*", "", true),
        ("*", "abc", true),
        ("**", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ba", false),
        ("*c", "abc", true),
        ("*c", "abcd", false),
        ("a*c", "ac", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbbd", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxcyyb", false),
        ("*a*", "bab", true),
        ("*?", "", false),
        ("*?", "x", true),
        ("?*?", "x", false),
        ("*ab", "aab", true),
        ("*aab", "aaab", true),
        ("a.b", "a.b", true),
        ("a.b", "axb", false),
        ("A*", "alice", false),
        // `?` is one character, not one byte.
        ("?", "é", true),
        ("??", "é", false),
        ("é*", "élodie", true),
        ("*ö?", "xöy", true),
    ];
    for (pattern, text, expected) in cases {
        assert_eq!(glob(pattern, text), expected, "{pattern:?} vs {text:?}");
    }
}

#[test]
fn glob_literal_prefix_stops_at_the_first_wildcard() {
    assert_eq!(Glob::new("abc").literal_prefix(), "abc");
    assert_eq!(Glob::new("ab*c").literal_prefix(), "ab");
    assert_eq!(Glob::new("ab?c").literal_prefix(), "ab");
    assert_eq!(Glob::new("*ab").literal_prefix(), "");
    assert_eq!(Glob::new("").literal_prefix(), "");
}

#[test]
fn glob_does_not_blow_up_on_pathological_patterns() {
    // A naive backtracking matcher needs on the order of n^4 steps here, and a
    // recursive one far more: neither would finish.
    let text = "a".repeat(100_000);
    for (pattern, expected) in [
        ("a*a*a*a*b", false),
        ("*a*a*a*a*a*a*a*a*b", false),
        ("a*a*a*a*a", true),
    ] {
        let (matched, steps) = Glob::new(pattern).matches_counting_steps(&text);
        assert_eq!(matched, expected, "{pattern}");
        let bound = (pattern.len() as u64 + 1) * (text.len() as u64 + 1);
        assert!(
            steps <= bound,
            "{pattern}: {steps} steps, more than pattern x text = {bound}"
        );
    }
}

#[test]
fn listing_matches_a_glob_sorted_by_name() {
    let mut chat = Chat::new();
    for name in [
        "bob", "alice", "Alan", "al", "albert", "carol", "a.l", "alx",
    ] {
        chat.create(name);
    }
    let names = |pattern: &str| chat.list(pattern, 0).0;
    // Byte order: upper case sorts first.
    assert_eq!(
        names("*"),
        ["Alan", "a.l", "al", "albert", "alice", "alx", "bob", "carol"]
    );
    assert_eq!(names(""), names("*"));
    assert_eq!(names("al*"), ["al", "albert", "alice", "alx"]);
    assert_eq!(names("al?"), ["alx"]);
    assert_eq!(names("a?l"), ["a.l"]);
    assert_eq!(
        names("*l*"),
        ["Alan", "a.l", "al", "albert", "alice", "alx", "carol"]
    );
    assert_eq!(names("*o*"), ["bob", "carol"]);
    assert_eq!(names("bob"), ["bob"]);
    assert_eq!(names("bo"), Vec::<String>::new());
    assert_eq!(names("?"), Vec::<String>::new());
    assert_eq!(names("é*"), Vec::<String>::new());
    assert_eq!(chat.list("al*", 0).1, 4);
}

#[test]
fn listing_survives_pathological_patterns_against_the_longest_names() {
    let mut chat = Chat::new();
    for length in 1..=USERNAME_BYTES_MAX {
        chat.create(&"a".repeat(length));
    }
    let (names, total, _) = chat.list("a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", 0);
    assert!(names.is_empty());
    assert_eq!(total, 0);
    assert_eq!(
        chat.list("a*a*a*a*a*a*a*a*a*a", 0).1,
        USERNAME_BYTES_MAX as u64 - 9
    );
}

#[test]
fn listing_pages_have_exact_boundaries() {
    let mut chat = Chat::new();
    let count = 2 * LIST_PAGE_SIZE + 20;
    let all: Vec<String> = (0..count).map(|n| format!("user{n:03}")).collect();
    // Created in reverse to show that the order is by name, not by creation.
    for name in all.iter().rev() {
        chat.create(name);
    }
    chat.create("other");
    let total = count as u64;

    let (page0, total0, more0) = chat.list("user*", 0);
    assert_eq!(page0, all[..LIST_PAGE_SIZE]);
    assert_eq!((total0, more0), (total, true));
    let (page1, _, more1) = chat.list("user*", 1);
    assert_eq!(page1, all[LIST_PAGE_SIZE..2 * LIST_PAGE_SIZE]);
    assert!(more1);
    let (page2, total2, more2) = chat.list("user*", 2);
    assert_eq!(page2, all[2 * LIST_PAGE_SIZE..]);
    assert_eq!((total2, more2), (total, false));
    let (page3, total3, more3) = chat.list("user*", 3);
    assert!(page3.is_empty());
    assert_eq!((total3, more3), (total, false));
    let (last, _, more_last) = chat.list("user*", u32::MAX);
    assert!(last.is_empty());
    assert!(!more_last);
}

#[test]
fn listing_a_page_exactly_full_has_no_more() {
    let mut chat = Chat::new();
    for n in 0..LIST_PAGE_SIZE {
        chat.create(&format!("u{n:02}"));
    }
    let (names, total, has_more) = chat.list("*", 0);
    assert_eq!(names.len(), LIST_PAGE_SIZE);
    assert_eq!((total, has_more), (LIST_PAGE_SIZE as u64, false));
    chat.create("u99");
    assert!(chat.list("*", 0).2);
    assert_eq!(chat.list("*", 1).0, ["u99"]);
}

#[test]
fn listing_an_empty_state_is_an_empty_page() {
    let chat = Chat::new();
    assert_eq!(chat.list("*", 0), (Vec::new(), 0, false));
}

#[test]
fn listing_refuses_patterns_over_the_bound() {
    let mut chat = Chat::new();
    chat.create("alice");
    let longest = format!("a{}", "*".repeat(PATTERN_BYTES_MAX - 1));
    assert_eq!(chat.list(&longest, 0).0, ["alice"]);
    let too_long = format!("{longest}*");
    assert!(matches!(
        chat.query(list(&too_long, 0)),
        Err(AppError::InvalidPattern(_))
    ));
    // The bound is in bytes: 33 two-byte characters are 66 bytes.
    assert!(matches!(
        chat.query(list(&"é".repeat(33), 0)),
        Err(AppError::InvalidPattern(_))
    ));
}

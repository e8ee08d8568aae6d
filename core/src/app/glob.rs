//! Glob patterns for listing accounts: `*` matches any run of characters (also none), `?`
//! exactly one character, and every other character itself.
//!
//! Matching is the iterative two-pointer algorithm with a single backtrack point: on a
//! mismatch it only ever retries the most recent `*` one character further along. A
//! later `*` subsumes every choice an earlier one could make, so this is complete, and
//! it runs in O(pattern × text) time and O(1) extra space. A recursive matcher would go
//! exponential on patterns such as `a*a*a*a*b`, and a regex engine would be a dependency
//! for no gain.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// `*`
    AnyRun,
    /// `?`
    AnyOne,
    Literal(char),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Every string is a pattern; an empty one means "everything", like `*`, so that a
    /// client can list all accounts without knowing the syntax.
    pub(crate) fn new(pattern: &str) -> Glob {
        if pattern.is_empty() {
            return Glob {
                tokens: vec![Token::AnyRun],
            };
        }
        let mut tokens: Vec<Token> = Vec::with_capacity(pattern.len());
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::AnyRun,
                '?' => Token::AnyOne,
                other => Token::Literal(other),
            };
            // `**` matches what `*` matches; collapsing runs keeps backtracking short.
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(token);
        }
        Glob { tokens }
    }

    /// The literal characters before the first wildcard. Every match starts with them, so
    /// a sorted listing can seek to this prefix instead of scanning every name.
    pub(crate) fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|token| match token {
                Token::Literal(c) => Some(*c),
                Token::AnyRun | Token::AnyOne => None,
            })
            .collect()
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        self.matches_counting_steps(text).0
    }

    /// Matches and counts loop steps: the tests bound the work (at most pattern length
    /// times text length) instead of timing it.
    pub(crate) fn matches_counting_steps(&self, text: &str) -> (bool, u64) {
        let mut steps = 0u64;
        let matched = self.match_loop(text, &mut steps);
        (matched, steps)
    }

    fn match_loop(&self, text: &str, steps: &mut u64) -> bool {
        // Positions: `token_index` into the pattern, `text_at` a byte offset into `text`
        // that always sits on a character boundary because it only moves by whole
        // characters.
        let mut token_index = 0;
        let mut text_at = 0;
        // After the latest `*`: the token that follows it, and where in the text the
        // `*`'s run currently ends.
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            *steps += 1;
            let next_char = char_at(text, text_at);
            match (self.tokens.get(token_index), next_char) {
                (None, None) => return true,
                (Some(Token::AnyRun), _) => {
                    token_index += 1;
                    backtrack = Some((token_index, text_at));
                    continue;
                }
                (Some(Token::AnyOne), Some(c)) => {
                    token_index += 1;
                    text_at += c.len_utf8();
                    continue;
                }
                (Some(Token::Literal(expected)), Some(c)) if *expected == c => {
                    token_index += 1;
                    text_at += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the latest `*` swallow one more character and retry from the
            // token after it. Without a `*`, or with no text left to swallow, it failed.
            let Some((resume_token, run_end)) = backtrack else {
                return false;
            };
            let Some(swallowed) = char_at(text, run_end) else {
                return false;
            };
            let run_end = run_end + swallowed.len_utf8();
            backtrack = Some((resume_token, run_end));
            token_index = resume_token;
            text_at = run_end;
        }
    }
}

/// The character starting at byte offset `at`, or `None` at the end (or, defensively,
/// off a character boundary, which the matcher never produces).
fn char_at(text: &str, at: usize) -> Option<char> {
    text.get(at..).and_then(|rest| rest.chars().next())
}

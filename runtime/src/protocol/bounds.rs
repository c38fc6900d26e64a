//! Bounds on every value a peer announces. A message that breaks one is refused with a typed
//! error (a rejected task, a refused request) or, for a registration, the peer is dropped; it
//! never sizes an allocation or a loop first.

use super::{ArgSpec, TaskSpec};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest function name, in bytes.
pub const MAX_FUNC_LEN: usize = 256;
/// Longest worker or client name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest address (URL), in bytes.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// Most arguments of one task.
pub const MAX_ARGS: usize = 65_536;
/// Most retries of one task.
pub const MAX_RETRIES: u32 = 1_000;
/// Most tasks in one `Submit`; larger graphs are submitted in several messages. Bounds the
/// time the scheduler spends on one message (other peers wait that long at most).
pub const MAX_TASKS_PER_SUBMIT: usize = 16_384;
/// Most keys in one `Release`, `Cancel`, `Scatter`, `WhoHas` or `Get`.
pub const MAX_KEYS_PER_MESSAGE: usize = 65_536;
/// Most workers named in one `Retire`.
pub const MAX_WORKERS_PER_RETIRE: usize = 65_536;
/// Most threads a worker may announce.
pub const MAX_NTHREADS: u32 = 4_096;
/// Longest error message kept from a worker, in bytes (longer ones are cut).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Checks a name-like string: length, and no control characters.
pub fn check_text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > max {
        return Err(format!("{what} of {} bytes exceeds {max} bytes", s.len()));
    }
    // Printable ASCII (nearly every name) is checked a byte at a time, vectorised (a fold, not
    // `all`, whose early exit keeps the loop scalar); anything else is decoded and checked
    // character by character.
    let printable_ascii = s.bytes().fold(true, |ok, b| ok & (0x20..0x7f).contains(&b));
    if !printable_ascii && s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

/// Checks a task spec against the bounds above.
pub fn check_task(t: &TaskSpec) -> Result<(), String> {
    check_text("key", &t.key, MAX_KEY_LEN)?;
    check_text("function name", &t.func, MAX_FUNC_LEN)?;
    if t.args.len() > MAX_ARGS {
        return Err(format!("{} arguments exceed {MAX_ARGS}", t.args.len()));
    }
    if t.retries > MAX_RETRIES {
        return Err(format!("{} retries exceed {MAX_RETRIES}", t.retries));
    }
    for a in &t.args {
        if let ArgSpec::Key(k) = a {
            check_text("dependency key", k, MAX_KEY_LEN)?;
        }
    }
    Ok(())
}

/// Cuts an error message to [`MAX_MESSAGE_LEN`] on a character boundary.
pub fn clip_message(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_checks_name_the_problem() {
        assert!(check_text("key", "inc-1", MAX_KEY_LEN).is_ok());
        assert!(check_text("key", "", MAX_KEY_LEN).unwrap_err().contains("empty"));
        assert!(check_text("key", &"x".repeat(600), MAX_KEY_LEN).unwrap_err().contains("600 bytes"));
        assert!(check_text("key", "a\nb", MAX_KEY_LEN).unwrap_err().contains("control"));
        let long = clip_message("é".repeat(MAX_MESSAGE_LEN));
        assert!(long.len() <= MAX_MESSAGE_LEN + 4 && long.ends_with('…'));
        // The ASCII fast path and the full check: DEL and C1 controls are refused too.
        for bad in ["a\u{7f}b", "a\u{85}b", "\u{9f}", "tab\there"] {
            assert!(check_text("key", bad, MAX_KEY_LEN).is_err(), "{bad:?}");
        }
        assert!(check_text("key", "ключ-é-∑", MAX_KEY_LEN).is_ok());
    }

    proptest::proptest! {
        /// The check refuses exactly the strings with a control character (within the length).
        #[test]
        fn text_check_matches_the_definition(s in "\\PC{0,8}[\\x00-\\x{a0}]{0,4}\\PC{0,8}") {
            let refused = check_text("key", &s, MAX_KEY_LEN).is_err();
            proptest::prop_assert_eq!(refused, s.is_empty() || s.chars().any(char::is_control));
        }
    }
}

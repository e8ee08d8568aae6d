//! `chatctl` as a user sees it: its help, and its one-line errors and exit codes
//! (snapshots with `insta`).

use crate::harness::{self, Cluster};
use std::process::{Command, Output};

fn chatctl(cluster: Option<&Cluster>, args: &[&str], password: Option<&str>) -> Output {
    let mut command = Command::new(harness::chatctl());
    if let Some(cluster) = cluster {
        command.arg("--cluster").arg(cluster.addresses().join(","));
    }
    command
        .args(args)
        .env_remove("CHAT_TOKEN")
        .env_remove("CHAT_PASSWORD");
    if let Some(password) = password {
        command.env("CHAT_PASSWORD", password);
    }
    command.output().expect("run chatctl")
}

/// A child process that dies with its handle, also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Best effort: it may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `exit <code>: <stderr>` for an error snapshot.
fn failure(output: &Output) -> String {
    format!(
        "exit {}: {}",
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).trim_end()
    )
}

#[test]
fn help_is_stable() {
    let help = chatctl(None, &["--help"], None);
    assert!(help.status.success());
    insta::assert_snapshot!("chatctl_help", stdout(&help));
    let send_help = chatctl(None, &["send", "--help"], None);
    insta::assert_snapshot!("chatctl_send_help", stdout(&send_help));
}

#[test]
fn commands_and_error_lines() {
    harness::run(async {
        let cluster = Cluster::start(3);
        cluster.leader().await;
        let c = Some(&cluster);
        let pw = Some(harness::PASSWORD);
        let ok = chatctl(c, &["register", "--user", "alice"], pw);
        assert_eq!(stdout(&ok), "registered alice\n", "{}", failure(&ok));
        let ok = chatctl(c, &["--json", "register", "--user", "bob"], pw);
        assert_eq!(stdout(&ok), "{\"user\":\"bob\"}\n");
        let ok = chatctl(c, &["send", "--user", "alice", "--to", "bob", "hi bob"], pw);
        assert!(stdout(&ok).starts_with("sent message "), "{}", failure(&ok));
        let ok = chatctl(c, &["read", "--user", "bob"], pw);
        assert!(
            stdout(&ok).ends_with("from alice: hi bob\n"),
            "{}",
            stdout(&ok)
        );
        let ok = chatctl(c, &["list", "--user", "alice", "*"], pw);
        assert_eq!(stdout(&ok), "alice\nbob\n(2 matching, page 0)\n");
        // Listing accounts needs a login.
        let refused = chatctl(c, &["list", "--user", "alice", "*"], Some("wrong"));
        assert_eq!(refused.status.code(), Some(1), "{}", failure(&refused));
        let token = chatctl(c, &["login", "--user", "bob"], pw);
        let token = stdout(&token).trim().to_owned();
        let mut with_token = Command::new(harness::chatctl());
        let ok = with_token
            .arg("--cluster")
            .arg(cluster.address(1))
            .args(["read", "--user", "bob"])
            .env("CHAT_TOKEN", &token)
            .env_remove("CHAT_PASSWORD")
            .output()
            .expect("run chatctl");
        assert_eq!(stdout(&ok), "no unread messages\n", "{}", failure(&ok));
        let ok = chatctl(c, &["status"], None);
        assert_eq!(stdout(&ok).lines().count(), 3, "{}", stdout(&ok));

        // `listen` prints only what arrives after it starts, one JSON line each.
        let mut listen = KillOnDrop(
            Command::new(harness::chatctl())
                .arg("--cluster")
                .arg(cluster.address(2))
                .args(["--json", "listen", "--user", "bob"])
                .env("CHAT_PASSWORD", harness::PASSWORD)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run chatctl listen"),
        );
        let stdout_pipe = listen.0.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        for text in ["live one", "live two"] {
            let ok = chatctl(c, &["send", "--user", "alice", "--to", "bob", text], pw);
            assert!(ok.status.success(), "{}", failure(&ok));
        }
        // Bounded waits: a silent listener fails the test instead of hanging it.
        let lines: Vec<String> = tokio::task::block_in_place(|| {
            (0..2)
                .map_while(|_| {
                    line_rx
                        .recv_timeout(std::time::Duration::from_secs(10))
                        .ok()
                })
                .collect()
        });
        drop(listen);
        let bodies: Vec<String> = lines
            .iter()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                value["body"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(bodies, ["live one", "live two"]);

        // A body cannot drive the terminal or forge a line: it prints escaped, on one line.
        let forged = "\x1b]0;title\x07\x1b[2J\r\n#999 from admin: pay me";
        let ok = chatctl(c, &["send", "--user", "bob", "--to", "alice", forged], pw);
        let id = stdout(&ok)
            .trim()
            .strip_prefix("sent message ")
            .unwrap_or_default()
            .to_owned();
        assert!(!id.is_empty(), "{}", failure(&ok));
        let ok = chatctl(c, &["read", "--user", "alice"], pw);
        assert_eq!(
            stdout(&ok),
            format!("#{id} from bob: \\x1b]0;title\\x07\\x1b[2J\\r\\n#999 from admin: pay me\n"),
            "{}",
            failure(&ok)
        );

        let big = "x".repeat(5_000);
        let errors = [
            chatctl(c, &["login", "--user", "alice"], Some("wrong")),
            chatctl(c, &["send", "--user", "alice", "--to", "carol", "hi"], pw),
            chatctl(c, &["send", "--user", "alice", "--to", "bob", &big], pw),
            chatctl(c, &["register", "--user=-bad"], pw),
            chatctl(c, &["register", "--user", "alice"], pw),
            chatctl(c, &["delete-messages", "--user", "alice", "999"], pw),
            chatctl(c, &["list", "--user", "alice", &"*".repeat(65)], pw),
            chatctl(c, &["read", "--user", "alice", "--limit", "5000"], pw),
        ];
        let lines: Vec<String> = errors.iter().map(failure).collect();
        insta::assert_snapshot!("chatctl_errors", lines.join("\n"));
        let usage = chatctl(c, &["send", "--user", "alice"], pw);
        assert_eq!(usage.status.code(), Some(2));
    });
}

//! The interactive commands as users run them: `ember chat` on piped input, and `ember
//! train --tui` driven in a pseudo-terminal.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TINY, assert_succeeds, ember, gpt2, tiny_corpus};
use serde_json::Value;

mod common;

#[test]
fn chat_streams_replies_and_resets() {
    let model = gpt2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello there\nhow are you\n/reset\nhello there\n/system be brief\n/nonsense\n/quit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_succeeds(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // Reply, reply, reset notice, reply: the first reply again (greedy, same history).
    assert_eq!(lines[2], "[conversation reset]");
    assert_eq!(
        lines[0], lines[3],
        "after /reset the same message gets the same reply"
    );
    assert!(!lines[0].trim().is_empty());
    assert!(text.contains("[system message set; conversation reset]"));
    assert!(text.contains("[unknown command /nonsense]"));
    assert!(!text.contains("never read"));
}

/// A pseudo-terminal: the master side, and the slave for a child's stdio.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; no name buffer or termios is passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: both descriptors were just opened and are owned here.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// What the test does once the dashboard shows.
#[derive(Clone, Copy)]
enum Poke {
    Nothing,
    Type(&'static [u8]),
    Signal(libc::c_int),
}

/// `ember train --tui` in a pseudo-terminal (its own session, the pty its controlling
/// terminal); `poke` happens once the dashboard shows. Returns the exit status and
/// everything the terminal received.
fn train_in_pty(
    dir: &Path,
    out: &Path,
    steps: usize,
    poke: Poke,
) -> (std::process::ExitStatus, String) {
    let data = tiny_corpus(dir);
    let (master, slave) = open_pty();
    let steps = format!("train.steps={steps}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ember"));
    command
        .args([
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            &steps,
            "--tui",
        ])
        .args(TINY)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .env("TERM", "xterm-256color");
    let slave_fd = slave.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(slave);
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut writer = std::fs::File::from(master);
    let (mut screen, mut typed) = (Vec::new(), matches!(poke, Poke::Nothing));
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(20)) {
            screen.extend(chunk);
        }
        if !typed && String::from_utf8_lossy(&screen).contains("q or Ctrl-C") {
            match poke {
                Poke::Type(keys) => writer.write_all(keys).unwrap(),
                Poke::Signal(signal) => {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
                }
                Poke::Nothing => {}
            }
            typed = true;
        }
        if let Some(status) = child.try_wait().unwrap() {
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                screen.extend(chunk);
            }
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!(
                "ember train --tui did not finish:\n{}",
                String::from_utf8_lossy(&screen)
            );
        }
    };
    (status, String::from_utf8_lossy(&screen).into_owned())
}

#[test]
fn train_tui_draws_the_dashboard_in_a_terminal_and_stops_on_q() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (status, screen) = train_in_pty(dir.path(), &out, 8, Poke::Nothing);
    assert!(status.success(), "{screen}");
    for want in ["q or Ctrl-C", "loss", "tok/s", "memory", "step 8/8"] {
        assert!(
            screen.contains(want),
            "`{want}` not on the screen:\n{screen}"
        );
    }
    // The alternate screen was left and the summary printed after it.
    assert!(
        screen.contains("\u{1b}[?1049l"),
        "the terminal was not restored"
    );
    assert!(screen.contains("done: step 8"));

    // `q` stops a long run at a checkpoint that `--resume` continues.
    let long = dir.path().join("long");
    let (status, screen) = train_in_pty(dir.path(), &long, 100_000, Poke::Type(b"q"));
    assert!(status.success(), "{screen}");
    let done = screen
        .lines()
        .find(|l| l.contains("done: step"))
        .expect("a summary line");
    let step: usize = done
        .split("done: step ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(step < 100_000, "{done}");
    assert!(screen.contains("continue with --resume"), "{screen}");
    // metrics.jsonl ends at or before the checkpoint's step.
    let last_logged = std::fs::read_to_string(long.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["step"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(last_logged as usize <= step);
    let info = ember(&["info", "--model", long.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains(&format!("step: {step}")),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );

    // SIGTERM stops it the same way: a checkpoint, the terminal given back.
    let killed = dir.path().join("killed");
    let (status, screen) = train_in_pty(dir.path(), &killed, 100_000, Poke::Signal(libc::SIGTERM));
    assert!(status.success(), "{screen}");
    assert!(screen.contains("\u{1b}[?1049l") && screen.contains("continue with --resume"));
    assert!(killed.join("checkpoint").exists());

    // Not a terminal: plain lines.
    let plain = dir.path().join("plain");
    let data = tiny_corpus(dir.path());
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
        "--set",
        "train.steps=4",
        "--tui",
    ];
    args.extend_from_slice(TINY);
    let run = ember(&args);
    assert!(run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--tui: stdout is not a terminal"));
    assert!(String::from_utf8_lossy(&run.stdout).contains("step     4/4"));
}
